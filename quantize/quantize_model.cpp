#include "quantize/quantize_model.h"

#include <omp.h>

#include <algorithm>
#include <filesystem>

#include "quantize/imatrix.h"
#include "runtime/error.h"
#include "runtime/gguf/gguf.h"

namespace ds3::quant {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw Error("quantize", msg); }

int threads_or_default(int n) { return n > 0 ? n : omp_get_max_threads(); }

}  // namespace

void quantize_rows(TypeId type, const float* src, uint8_t* dst, int64_t n_rows, int64_t row_len,
                   std::span<const float* const> importance, int n_threads) {
    const TypeTraits& tr = type_traits(type);
    if (!tr.from_float_ref) fail("type " + std::string(tr.name) + " has no quantiser");
    const auto rb = type_nbytes(type, static_cast<uint64_t>(row_len));
    if (!rb) fail("rows of " + std::to_string(row_len) + " elements are not whole " + std::string(tr.name) + " blocks");
    // from_float where it exists: the same bytes as the reference, faster.
    const FromFloatFn q = tr.from_float ? tr.from_float : tr.from_float_ref;
    const bool parallel = n_rows > 1 && n_rows * row_len >= (int64_t{1} << 15);
#pragma omp parallel for num_threads(threads_or_default(n_threads)) if (parallel) schedule(dynamic, 1)
    for (int64_t r = 0; r < n_rows; ++r)
        q(src + r * row_len, dst + static_cast<uint64_t>(r) * *rb, row_len,
          importance.empty() ? nullptr : importance[static_cast<size_t>(r)]);
}

QuantizeStats quantize_model(const std::string& in_path, const std::string& out_path, const QuantizeOptions& o) {
    namespace fs = std::filesystem;
    {
        std::error_code ec;
        if (fs::exists(out_path, ec) && fs::exists(in_path, ec) && fs::equivalent(in_path, out_path, ec))
            fail(out_path + ": the output would overwrite the input");
    }
    const gguf::File in = gguf::File::open(in_path);
    const std::string arch = in.get_string("general.architecture", "");
    if (arch != "deepseek2")
        fail(in_path + ": general.architecture is '" + arch + "', expected deepseek2 (a ds3 or llama.cpp DeepSeek file)");
    const int64_t n_layer = static_cast<int64_t>(in.get_u64("deepseek2.block_count"));

    gguf::Writer w(out_path, in.alignment());
    for (const gguf::KeyValue& kv : in.metadata()) {
        if (kv.key == gguf::kChecksumKey || kv.key.rfind("quantize.", 0) == 0) continue;
        w.set_kv(kv.key, kv.value);
    }
    w.set_kv("general.file_type", gguf::Value::u32(o.target.file_type));
    w.set_kv("general.quantization_version", gguf::Value::u32(2));  // ggml's QK format version
    w.set_kv("ds3.quantize.type", gguf::Value::str(o.target.name));
    if (o.imatrix) {
        // llama.cpp's keys for the imatrix a file was made with.
        w.set_kv("quantize.imatrix.file", gguf::Value::str(fs::path(o.imatrix_path).filename().string()));
        w.set_kv("quantize.imatrix.dataset", gguf::Value::str(o.imatrix->dataset));
        w.set_kv("quantize.imatrix.entries_count", gguf::Value::i32(static_cast<int32_t>(o.imatrix->entries.size())));
        w.set_kv("quantize.imatrix.chunks_count", gguf::Value::i32(static_cast<int32_t>(o.imatrix->chunk_count)));
    }

    QuantizeStats st;
    std::vector<TypeId> types;
    uint64_t total = 0;
    for (const gguf::TensorInfo& t : in.tensors()) {
        const TypeTraits& src = type_traits(t.type);
        const TypeChoice c = choose_type(o.target, t.name, t.ne, n_layer, o.overrides);
        if (c.type != t.type && !src.to_float)
            fail(in_path + ": tensor " + t.name + " is " + std::string(src.name) + ", which cannot be dequantised");
        if (c.type != c.wanted) {
            ++st.n_fallback;
            st.notes.push_back(t.name + ": rows of " + std::to_string(t.ne[0]) + " do not fit " +
                               std::string(type_traits(c.wanted).name) + ", wrote " +
                               std::string(type_traits(c.type).name));
        }
        types.push_back(c.type);
        w.add_tensor(t.name, t.ne, c.type);
        total += w.tensors().back().nbytes;
        st.bytes_in += t.nbytes;
        st.n_weights += t.n_elements();
    }
    w.write_header();

    Progress prog("quantize", total, o.progress);
    std::vector<float> f32;
    std::vector<uint8_t> q;
    std::vector<float> imp;           // importance of the current matrix
    std::vector<const float*> row_imp;
    for (size_t i = 0; i < in.tensors().size(); ++i) {
        const gguf::TensorInfo& t = in.tensors()[i];
        const TypeId to = types[i];
        prog.set_detail(t.name);
        const std::span<const uint8_t> data = in.tensor_data(t);
        w.begin_tensor();
        if (to == t.type) {
            // Already the chosen type: copy the bytes (in chunks, so the pages stream).
            const uint64_t step = uint64_t{16} << 20;
            for (uint64_t off = 0; off < data.size(); off += step) {
                const auto part = data.subspan(off, std::min<uint64_t>(step, data.size() - off));
                w.write_chunk(part);
                prog.add(part.size());
            }
        } else {
            const int64_t row_len = static_cast<int64_t>(t.ne[0]);
            const int64_t n_rows = static_cast<int64_t>(t.n_elements()) / row_len;
            const int64_t per_mat = t.ne.size() >= 2 ? static_cast<int64_t>(t.ne[1]) : 1;
            const TypeTraits& src = type_traits(t.type);
            const uint64_t in_rb = *type_nbytes(t.type, static_cast<uint64_t>(row_len));
            const uint64_t out_rb = *type_nbytes(to, static_cast<uint64_t>(row_len));
            const int64_t step = std::max<int64_t>(1, kQuantChunkElems / row_len);
            const bool use_imatrix = o.imatrix && type_traits(to).quantized && t.ne.size() >= 2;
            int64_t imp_mat = -1;
            bool imp_ok = false;
            for (int64_t r0 = 0, n = 0; r0 < n_rows; r0 += n) {
                // A chunk never spans two matrices of a 3-D tensor, so one importance
                // vector serves all its rows.
                const int64_t mat = r0 / per_mat;
                n = std::min({step, n_rows - r0, (mat + 1) * per_mat - r0});
                f32.resize(static_cast<size_t>(n * row_len));
                for (int64_t r = 0; r < n; ++r)
                    src.to_float(data.data() + static_cast<uint64_t>(r0 + r) * in_rb, f32.data() + r * row_len, row_len);
                if (use_imatrix && mat != imp_mat) {
                    imp_ok = o.imatrix->importance(t.name, mat, row_len, imp);
                    imp_mat = mat;
                }
                row_imp.assign(static_cast<size_t>(n), use_imatrix && imp_ok ? imp.data() : nullptr);
                q.resize(static_cast<size_t>(n) * out_rb);
                quantize_rows(to, f32.data(), q.data(), n, row_len, row_imp, o.n_threads);
                w.write_chunk(q);
                prog.add(q.size());
            }
        }
        w.end_tensor();
        st.bytes_out += w.tensors()[i].nbytes;
    }
    w.finish();
    prog.finish();
    st.n_tensors = in.tensors().size();
    st.seconds = prog.elapsed_s();
    return st;
}

}  // namespace ds3::quant
