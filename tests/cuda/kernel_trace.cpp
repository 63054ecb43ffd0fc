// A timeline of any CUDA program, for tuning: loaded by the CUDA driver through
// CUDA_INJECTION64_PATH, it records through CUPTI's activity API every kernel's start and
// end (concurrent-kernel records: kernels keep overlapping, and kernels replayed from a
// CUDA graph are recorded node by node), every copy, and every CUDA runtime call on the
// host (on the same clock), and writes them as CSV when the program exits.
//
//   export CUDA_INJECTION64_PATH=build-cuda/lib/libds3_kernel_trace.so DS3_TRACE_OUT=trace.csv
//   build-cuda/bin/ds3 bench --backend cuda --synthetic v3 --layers 8 -n 32 -r 1
//   python3 tests/cuda/trace_step.py trace.csv
//
// Nsight Systems would do this, but it is not on the device machines; CUPTI ships with
// the CUDA toolkit (libcupti), so this works wherever the program does.
#include <cupti.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cxxabi.h>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Record {
    char kind;  // k: kernel, m: copy, a: runtime call
    uint64_t start, end;
    uint32_t stream, graph, correlation;
    uint64_t node;
    int grid[3], block[3];
    uint16_t regs;
    std::string name;
};

std::mutex g_mutex;
std::vector<Record> g_records;
uint64_t g_dropped = 0;

constexpr size_t kBufferBytes = 8u << 20;

void report(CUptiResult r, const char* what) {
    if (r == CUPTI_SUCCESS) return;
    const char* s = nullptr;
    cuptiGetResultString(r, &s);
    std::fprintf(stderr, "ds3 kernel trace: %s failed: %s\n", what, s ? s : "unknown CUPTI error");
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
    *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
    *size = *buffer ? kBufferBytes : 0;
    *max_records = 0;
}

std::string demangle(const char* name) {
    int status = 0;
    char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
    std::string s = status == 0 && d ? d : name;
    std::free(d);
    return s;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
    CUpti_Activity* rec = nullptr;
    std::vector<Record> batch;
    static const char* const copy_kinds[] = {"?", "HtoD", "DtoH", "HtoA", "AtoH", "AtoA", "AtoD", "DtoA", "DtoD", "HtoH"};
    while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
        if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
            const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
            batch.push_back({'k', k->start, k->end, k->streamId, k->graphId, k->correlationId, k->graphNodeId,
                             {k->gridX, k->gridY, k->gridZ}, {k->blockX, k->blockY, k->blockZ},
                             k->registersPerThread, demangle(k->name)});
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
            const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(rec);
            const char* kind = m->copyKind < 10 ? copy_kinds[m->copyKind] : "?";
            batch.push_back({'m', m->start, m->end, m->streamId, m->graphId, m->correlationId, m->graphNodeId, {}, {},
                             0, std::string("copy ") + kind + " " + std::to_string(m->bytes) + " B"});
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_RUNTIME) {
            const auto* a = reinterpret_cast<const CUpti_ActivityAPI*>(rec);
            const char* name = nullptr;
            cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, a->cbid, &name);
            batch.push_back({'a', a->start, a->end, 0, 0, a->correlationId, 0, {}, {}, 0, name ? name : "?"});
        }
    }
    size_t dropped = 0;
    cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped);
    std::free(buffer);
    std::lock_guard<std::mutex> lock(g_mutex);
    g_dropped += dropped;
    for (auto& r : batch) g_records.push_back(std::move(r));
}

// Names may hold commas: quote them, doubling quotes.
std::string csv_quote(const std::string& s) {
    std::string q = "\"";
    for (char c : s) {
        if (c == '"') q += '"';
        q += c;
    }
    return q + '"';
}

void write_trace() {
    cuptiActivityFlushAll(1);
    const char* path = std::getenv("DS3_TRACE_OUT");
    if (!path || !*path) path = "kernel_trace.csv";
    std::lock_guard<std::mutex> lock(g_mutex);
    FILE* f = std::fopen(path, "w");
    if (!f) {
        std::fprintf(stderr, "ds3 kernel trace: cannot write %s\n", path);
        return;
    }
    std::fprintf(f, "kind,start_ns,end_ns,stream,graph,correlation,node,grid,block,regs,name\n");
    for (const Record& r : g_records)
        std::fprintf(f, "%c,%llu,%llu,%u,%u,%u,%llu,%dx%dx%d,%dx%dx%d,%u,%s\n", r.kind,
                     static_cast<unsigned long long>(r.start), static_cast<unsigned long long>(r.end), r.stream, r.graph, r.correlation,
                     static_cast<unsigned long long>(r.node), r.grid[0], r.grid[1], r.grid[2], r.block[0], r.block[1],
                     r.block[2], r.regs, csv_quote(r.name).c_str());
    std::fclose(f);
    std::fprintf(stderr, "ds3 kernel trace: %zu records to %s (%llu records dropped)\n", g_records.size(), path,
                 static_cast<unsigned long long>(g_dropped));
}

}  // namespace

// Called by the CUDA driver when it loads this library (CUDA_INJECTION64_PATH).
extern "C" __attribute__((visibility("default"))) int InitializeInjection() {
    report(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "cuptiActivityRegisterCallbacks");
    report(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "cuptiActivityEnable(kernels)");
    report(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY), "cuptiActivityEnable(copies)");
    report(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME), "cuptiActivityEnable(runtime calls)");
    std::atexit(write_trace);
    return 1;
}
