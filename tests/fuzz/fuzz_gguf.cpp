// libFuzzer target for the GGUF reader: any input must either parse (and then every view
// it hands out must lie inside the input) or throw ds3::Error; nothing else is allowed.
#include <cstddef>
#include <cstdint>

#include "runtime/error.h"
#include "runtime/gguf/gguf.h"

namespace {

// Walks a value the way a consumer would, so that accessors run on fuzzed data too.
size_t touch(const ds3::gguf::Value& v) {
    size_t n = 1;
    try {
        if (v.type == ds3::gguf::ValueType::ARRAY) {
            for (const auto& item : v.as_array().items) n += touch(item);
        } else if (v.type == ds3::gguf::ValueType::STRING) {
            n += v.as_string().size();
        } else if (v.type == ds3::gguf::ValueType::BOOL) {
            n += v.as_bool();
        } else {
            n += static_cast<size_t>(v.as_f64() != 0.0);
            if (v.is_integer()) n += static_cast<size_t>(v.as_i64() & 1);
        }
    } catch (const ds3::Error&) {
        // as_i64 of a large u64 is a legitimate Error.
    }
    return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const ds3::gguf::File f = ds3::gguf::File::parse({data, size}, "fuzz");
        size_t sink = 0;
        for (const auto& kv : f.metadata()) sink += touch(kv.value);
        for (const auto& t : f.tensors()) {
            const auto view = f.tensor_data(t);
            if (view.size() != t.nbytes) __builtin_trap();
            if (!view.empty()) {
                if (view.data() < data || view.data() + view.size() > data + size) __builtin_trap();
                sink += view.front() + view.back();
            }
            if (f.find_tensor(t.name) != &t) __builtin_trap();
        }
        if (f.data_offset() % f.alignment() != 0) __builtin_trap();
        (void)f.get_u64("general.alignment", 0);
        asm volatile("" : : "r"(sink));
    } catch (const ds3::Error&) {
    }
    return 0;
}
