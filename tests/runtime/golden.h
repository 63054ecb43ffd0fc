// The fixtures' goldens as the conformance tests read them (CPU in tests/runtime, CUDA in
// tests/cuda): the golden safetensors of a fixture, the fixture converted by `ds3 convert`
// once per process, and the comparisons both tests make.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common.h"
#include "convert/safetensors.h"

namespace ds3::test {

// <fixtures>/golden/<name>.golden.safetensors. The accessors REQUIRE the tensor exists.
struct Golden {
    hf::SafetensorsFile f;
    const hf::StTensor& t(const std::string& name) const;
    std::vector<float> f32(const std::string& name) const;
    std::vector<int32_t> i32(const std::string& name) const;  // REQUIREs dtype I32
    bool has(const std::string& name) const { return f.find(name) != nullptr; }
};

Golden golden(const fs::path& fx, const std::string& name);

// The fixture `name` converted with --outtype `outtype`, in scratch_dir("<tag>-<name>.<outtype>").
// Converts once per process (several test cases share the files); a failed conversion
// fails the test with ds3's stderr.
fs::path converted(const fs::path& fx, const std::string& name, const std::string& outtype, const std::string& tag);

float max_diff(const float* a, const float* b, size_t n);

// Checks logits [T][V] of prompt `pn` ("p0.", "p1.", ...) against the golden within `tol`:
// every row where the golden holds them all, else (v3-realvocab) the last row in full and
// the top 32 at every position, whose first must be the argmax.
void check_logits(const Golden& g, const std::string& pn, const std::vector<float>& logits, size_t T, size_t V,
                  float tol);

// "1,2,3": the --tokens argument of `ds3 eval` / `ds3 run`, and their --print-ids output.
std::string join_ids(const std::vector<int32_t>& ids);

}  // namespace ds3::test
