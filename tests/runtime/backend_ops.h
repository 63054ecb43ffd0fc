// The op test harness: every op of the graph IR, on odd sizes and every weight type the
// CPU supports, run on a backend under test and on a reference backend (the CPU), with
// the outputs compared by normalised mean squared error (as llama.cpp's
// test-backend-ops does). A new backend (CUDA, Vulkan) runs compare_backends(mine, cpu):
// the cases it does not claim through supports() are reported as skipped.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "runtime/weights.h"

namespace ds3::test {

struct OpStep {
    Graph graph;                                  // input nodes + the op under test
    std::vector<std::vector<uint8_t>> inputs;     // bytes per input node, in node order
    int op_node = -1;                             // the node whose output is compared
};

struct OpCase {
    std::string name;                      // "mul_mat bf16 in=37 out=19 T=3"
    std::shared_ptr<WeightStore> weights;  // kept alive for the graphs' views
    std::vector<OpStep> steps;             // run in order on one KV cache (mla_attn: two batches)
    int64_t cache_ctx = 0, cache_lora = 0, cache_rope = 0;  // mla_attn only
    double max_nmse = 1e-7;
};

std::vector<OpCase> make_op_cases();

struct OpResult {
    std::string name;
    bool supported = false;
    bool finite = true;
    double nmse = 0;  // worst over the case's steps
    bool ok() const;
    double max_nmse = 0;
};

std::vector<OpResult> compare_backends(Backend& test, Backend& ref);

}  // namespace ds3::test
