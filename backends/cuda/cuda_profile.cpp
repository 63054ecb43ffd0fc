// DS3_CUDA_PROFILE for the CUDA backend: events around each node (and, at level 2,
// around the kernels inside the fused ops), read back at the next synchronisation and
// printed per op kind when the backend ends.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "backends/cuda/check.h"
#include "backends/cuda/cuda_backend_impl.h"

namespace ds3::cuda {

void CudaBackend::prof_begin() {
    if (prof_used_ == prof_events_.size()) {
        cudaEvent_t a, b;
        DS3_CU(cudaEventCreate(&a));
        DS3_CU(cudaEventCreate(&b));
        prof_events_.push_back({a, b});
    }
    DS3_CU(cudaEventRecord(prof_events_[prof_used_].first, stream_));
}

void CudaBackend::prof_end(const Node& n, std::chrono::steady_clock::time_point t0) {
    DS3_CU(cudaEventRecord(prof_events_[prof_used_].second, stream_));
    // Decode-sized nodes apart from prefill ones: their costs differ by orders of magnitude.
    std::string kind = op_name(n.op);
    kind += n.rows <= 8 ? " (<=8 rows)" : " (>8 rows)";
    prof_pending_.push_back(kind);
    ++prof_used_;
    ProfRow& r = prof_rows_[kind];
    ++r.calls;
    r.host_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// DS3_CUDA_PROFILE=2 also times the kernels inside the fused ops (rows "  mla.kb", ...):
// sub_start() where an op begins, sub_mark(label) after each of its kernels.
cudaEvent_t CudaBackend::sub_event() {
    if (sub_used_ == sub_events_.size()) {
        cudaEvent_t ev;
        DS3_CU(cudaEventCreate(&ev));
        sub_events_.push_back(ev);
    }
    cudaEvent_t ev = sub_events_[sub_used_++];
    DS3_CU(cudaEventRecord(ev, stream_));
    return ev;
}

void CudaBackend::sub_start(int64_t rows) {
    if (prof_level_ < 2) return;
    sub_prev_ = sub_event();
    sub_small_ = rows <= 8;
}

void CudaBackend::sub_mark(const char* label) {
    if (prof_level_ < 2 || !sub_prev_) return;
    cudaEvent_t ev = sub_event();
    sub_pending_.push_back({sub_prev_, ev, label, sub_small_});
    sub_prev_ = ev;
}

void CudaBackend::prof_collect() {
    for (const SubSpan& sp : sub_pending_) {
        float ms = 0;
        ProfRow& r = prof_rows_[std::string("  ") + sp.label + (sp.small ? " (<=8 rows)" : " (>8 rows)")];
        ++r.calls;
        if (cudaEventElapsedTime(&ms, sp.a, sp.b) == cudaSuccess)
            r.gpu_ms += ms;
        else
            cudaGetLastError();
    }
    sub_pending_.clear();
    sub_used_ = 0;
    sub_prev_ = nullptr;
    for (size_t i = 0; i < prof_used_; ++i) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, prof_events_[i].first, prof_events_[i].second) == cudaSuccess)
            prof_rows_[prof_pending_[i]].gpu_ms += ms;
        else
            cudaGetLastError();
    }
    prof_used_ = 0;
    prof_pending_.clear();
}

void CudaBackend::prof_print() {
    double g = 0, h = 0;
    for (auto& [k, r] : prof_rows_) g += r.gpu_ms, h += r.host_ms;
    std::fprintf(stderr, "cuda profile: %-24s %8s %10s %10s\n", "op", "calls", "gpu ms", "host ms");
    for (auto& [k, r] : prof_rows_)
        std::fprintf(stderr, "cuda profile: %-24s %8lld %10.3f %10.3f\n", k.c_str(), static_cast<long long>(r.calls),
                     r.gpu_ms, r.host_ms);
    std::fprintf(stderr, "cuda profile: %-24s %8s %10.3f %10.3f\n", "total", "", g, h);
}

}  // namespace ds3::cuda
