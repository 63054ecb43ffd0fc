#include "golden.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <span>

#include "models/runner.h"

namespace ds3::test {

const hf::StTensor& Golden::t(const std::string& name) const {
    const hf::StTensor* p = f.find(name);
    REQUIRE(p != nullptr);
    return *p;
}

std::vector<float> Golden::f32(const std::string& name) const {
    const hf::StTensor& x = t(name);
    std::vector<float> v(x.n_elements());
    hf::to_f32(x, v);
    return v;
}

std::vector<int32_t> Golden::i32(const std::string& name) const {
    const hf::StTensor& x = t(name);
    REQUIRE(x.dtype == hf::DType::I32);
    std::vector<int32_t> v(x.n_elements());
    std::memcpy(v.data(), x.data.data(), v.size() * 4);
    return v;
}

Golden golden(const fs::path& fx, const std::string& name) {
    return Golden{hf::SafetensorsFile::open((fx / "golden" / (name + ".golden.safetensors")).string())};
}

fs::path converted(const fs::path& fx, const std::string& name, const std::string& outtype, const std::string& tag) {
    static std::map<std::string, fs::path> done;
    const std::string key = name + "." + outtype;
    if (auto it = done.find(key); it != done.end()) return it->second;
    const fs::path out = scratch_dir(tag + "-" + key) / (key + ".gguf");
    RunResult r = run_ds3({"convert", (fx / name).string(), "-o", out.string(), "--outtype", outtype});
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    done[key] = out;
    return out;
}

float max_diff(const float* a, const float* b, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; ++i) m = std::max(m, std::abs(a[i] - b[i]));
    return m;
}

void check_logits(const Golden& g, const std::string& pn, const std::vector<float>& logits, size_t T, size_t V,
                  float tol) {
    if (g.has(pn + "logits")) {
        const auto ref = g.f32(pn + "logits");
        const float d = max_diff(logits.data(), ref.data(), T * V);
        INFO("max |logit - golden| = " << d);
        CHECK(d <= tol);
        return;
    }
    const auto last = g.f32(pn + "last_logits");
    CHECK(max_diff(logits.data() + (T - 1) * V, last.data(), V) <= tol);
    const auto ids = g.i32(pn + "top32_ids");
    const auto top = g.f32(pn + "top32_logits");
    float worst = 0;
    for (size_t t = 0; t < T; ++t) {
        for (size_t j = 0; j < 32; ++j)
            worst = std::max(worst, std::abs(logits[t * V + size_t(ids[t * 32 + j])] - top[t * 32 + j]));
        CHECK(argmax(std::span<const float>(logits.data() + t * V, V)) == ids[t * 32]);
    }
    INFO("max top-32 |logit - golden| = " << worst);
    CHECK(worst <= tol);
}

std::string join_ids(const std::vector<int32_t>& ids) {
    std::string s;
    for (size_t i = 0; i < ids.size(); ++i) {
        if (i) s += ',';
        s += std::to_string(ids[i]);
    }
    return s;
}

}  // namespace ds3::test
