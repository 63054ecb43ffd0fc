// Every op of every available backend against the CPU reference (backend_ops.h). With
// only the CPU built, a second CPU instance with another thread count stands in, which
// keeps the harness itself tested.
#include <catch2/catch.hpp>

#include "backend_ops.h"
#include "backends/cpu/cpu_backend.h"

using namespace ds3;
using namespace ds3::test;

TEST_CASE("every op of every backend matches the CPU reference", "[backend-ops]") {
    auto ref = make_cpu_backend({1}, "cpu-ref");
    std::vector<std::unique_ptr<Backend>> backends;
    for (const std::string& name : available_backends()) {
        try {
            backends.push_back(create_backend(name, {2}));
        } catch (const std::exception& e) {
            WARN("backend " << name << " unavailable here: " << e.what());
        }
    }
    REQUIRE_FALSE(backends.empty());
    for (auto& be : backends) {
        int n_supported = 0;
        for (const OpResult& r : compare_backends(*be, *ref)) {
            INFO(be->name() << ": " << r.name << " nmse " << r.nmse << " (limit " << r.max_nmse << ")");
            CHECK(r.ok());
            n_supported += r.supported;
        }
        if (be->name() == "cpu") CHECK(n_supported == int(make_op_cases().size()));
    }
}

TEST_CASE("the harness notices a wrong backend", "[backend-ops]") {
    // A backend that gets add wrong (computes a - b): the harness must flag it.
    class WrongAdd final : public Backend {
    public:
        WrongAdd() : cpu_(make_cpu_backend({1}, "wrong-add")) {}
        const std::string& name() const override { return cpu_->name(); }
        bool supports(const Node& n) const override { return n.op == Op::add || n.op == Op::input; }
        std::unique_ptr<Buffer> alloc(size_t n) override { return cpu_->alloc(n); }
        void upload(Buffer& d, size_t o, const void* s, size_t n) override { cpu_->upload(d, o, s, n); }
        void download(const Buffer& s, size_t o, void* d, size_t n) override { cpu_->download(s, o, d, n); }
        void compute(const Node& n, std::span<Buffer* const> in, Buffer& out, Buffer* st) override {
            if (n.op != Op::add) return cpu_->compute(n, in, out, st);
            const float* a = static_cast<const float*>(in[0]->host_ptr());
            const float* b = static_cast<const float*>(in[1]->host_ptr());
            float* o = static_cast<float*>(out.host_ptr());
            for (int64_t i = 0; i < n.n_elements(); ++i) o[i] = a[i] - b[i];
        }

    private:
        std::unique_ptr<Backend> cpu_;
    } wrong;
    auto ref = make_cpu_backend({1}, "cpu-ref");
    int failed = 0, supported = 0;
    for (const OpResult& r : compare_backends(wrong, *ref)) {
        supported += r.supported;
        if (!r.ok()) {
            ++failed;
            CHECK(r.name.rfind("add", 0) == 0);
        }
    }
    CHECK(supported == 1);
    CHECK(failed == 1);
}
