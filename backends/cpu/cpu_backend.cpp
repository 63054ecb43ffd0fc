#include "backends/cpu/cpu_backend.h"

#include <cstring>
#include <vector>

#include "backends/cpu/ops.h"
#include "runtime/error.h"

namespace ds3 {

namespace {

class CpuBuffer final : public Buffer {
public:
    explicit CpuBuffer(size_t bytes) : bytes_(bytes), data_((bytes + 3) / 4) {}
    size_t size() const override { return bytes_; }
    void* host_ptr() override { return data_.data(); }

private:
    size_t bytes_;
    std::vector<float> data_;  // float storage: 4-byte alignment for f32 and i32 rows
};

float* f32(Buffer* b) { return static_cast<float*>(b->host_ptr()); }
const int32_t* i32(Buffer* b) { return static_cast<const int32_t*>(b->host_ptr()); }

class CpuBackend final : public Backend {
public:
    CpuBackend(const BackendOptions& o, std::string name) : name_(std::move(name)), threads_(o.n_threads) {}

    const std::string& name() const override { return name_; }

    bool supports(const Node& n) const override {
        for (const Weight* w : n.w)
            if (!cpu::weight_type_supported(w->type)) return false;
        return true;
    }

    std::unique_ptr<Buffer> alloc(size_t bytes) override { return std::make_unique<CpuBuffer>(bytes); }

    void upload(Buffer& dst, size_t offset, const void* src, size_t n) override {
        check(offset + n <= dst.size(), "cpu", "upload past the end of a buffer");
        std::memcpy(static_cast<uint8_t*>(dst.host_ptr()) + offset, src, n);
    }

    void download(const Buffer& src, size_t offset, void* dst, size_t n) override {
        check(offset + n <= src.size(), "cpu", "download past the end of a buffer");
        std::memcpy(dst, static_cast<const uint8_t*>(const_cast<Buffer&>(src).host_ptr()) + offset, n);
    }

    void compute(const Node& n, std::span<Buffer* const> in, Buffer& out_buf, Buffer* state) override {
        float* out = f32(&out_buf);
        switch (n.op) {
            case Op::input:
                return;  // filled by the scheduler
            case Op::get_rows:
                cpu::get_rows(*n.w[0], i32(in[0]), n.rows, out);
                return;
            case Op::rms_norm:
                cpu::rms_norm(f32(in[0]), *n.w[0], n.eps, n.rows, n.cols, out);
                return;
            case Op::mul_mat:
                cpu::matmul(*n.w[0], 0, f32(in[0]), n.rows, out, threads_);
                return;
            case Op::add: {
                const float* a = f32(in[0]);
                const float* b = f32(in[1]);
                for (int64_t i = 0; i < n.n_elements(); ++i) out[i] = a[i] + b[i];
                return;
            }
            case Op::swiglu:
                cpu::swiglu(f32(in[0]), f32(in[1]), n.n_elements(), out);
                return;
            case Op::view: {
                const float* s = f32(in[0]);
                const int64_t sc = n.src_cols;  // [T, src_cols] → [T, cols]
                for (int64_t r = 0; r < n.rows; ++r)
                    std::memcpy(out + r * n.cols, s + r * sc + n.col0, static_cast<size_t>(n.cols) * 4);
                return;
            }
            case Op::rope_yarn:
                std::memcpy(out, f32(in[0]), n.nbytes());
                cpu::rope(n, i32(in[1]), out);
                return;
            case Op::mla_attn: {
                check(state != nullptr, "cpu", n.name + ": mla_attn needs the latent cache");
                const int64_t width = n.attn.kv_lora + n.attn.qk_rope;
                cpu::mla_attn(n, f32(in[0]), f32(in[1]), f32(in[2]), f32(state),
                              static_cast<int64_t>(state->size() / 4) / width, out, threads_);
                return;
            }
            case Op::moe_route:
                cpu::moe_route(n, f32(in[0]), out, threads_);
                return;
            case Op::moe_ffn:
                cpu::moe_ffn(n, f32(in[0]), f32(in[1]), out, threads_);
                return;
            case Op::shared_ffn:
                cpu::shared_ffn(n, f32(in[0]), out, threads_);
                return;
            case Op::logits: {
                // last_only: [T, n_embd] → its last row [1, n_embd]
                const float* x = f32(in[0]) + (n.last_only ? (n.src_rows - 1) * n.src_cols : 0);
                cpu::matmul(*n.w[0], 0, x, n.rows, out, threads_);
                return;
            }
        }
        throw Error("cpu", n.name + ": unknown op");
    }

private:
    std::string name_;
    int threads_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const BackendOptions& opts, std::string name) {
    return std::make_unique<CpuBackend>(opts, std::move(name));
}

}  // namespace ds3
