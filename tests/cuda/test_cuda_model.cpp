// Whole models on the CUDA backend: the random in-memory models of tests/runtime
// (tiny_model), batch and token by token, against the CPU; experts split between the
// GPU and the CPU.
#include <catch2/catch.hpp>

#include "cuda_test.h"
#include "models/runner.h"
#include "tiny_model.h"

using namespace ds3;
using namespace ds3::test;

TEST_CASE("cuda: tiny models give the CPU's logits, batch and token by token", "[cuda][model]") {
    DS3_REQUIRE_CUDA(gpu);
    auto cpu = create_backend("cpu", {2});
    TinyOptions o;
    SECTION("V3 layout, F32") {}
    SECTION("BF16 weights") { o.matrix_type = TypeId::BF16; }
    SECTION("F16 weights") { o.matrix_type = TypeId::F16; }
    SECTION("no q_lora, V2 routing") {
        o.q_lora = false;
        o.v2_routing = true;
    }
    SECTION("attn_kv_b layout") { o.kv_b_only = true; }
    Deepseek2Model m = tiny_model(o);
    auto want = run_batch(m, {cpu.get()});
    auto batch = run_batch(m, {gpu.get()});
    auto inc = run_incremental(m, {gpu.get()});
    CHECK(all_finite(batch));
    CHECK(all_finite(inc));
    CHECK(max_diff(batch, want) < 1e-4f);
    CHECK(max_diff(inc, want) < 1e-4f);
}

TEST_CASE("cuda: experts split between the GPU and the CPU give the unsplit logits", "[cuda][model][sched]") {
    DS3_REQUIRE_CUDA(gpu);
    auto cpu = create_backend("cpu", {2});
    Deepseek2Model m = tiny_model({TypeId::BF16});
    ExpertPlacement pl;
    pl.expert_backend.resize(size_t(m.hp.n_layer));
    pl.expert_backend[1] = {1, 0, 0, 1, 1, 0, 1, 0};
    pl.expert_backend[2] = std::vector<int>(size_t(m.hp.n_expert), 1);
    auto want = run_batch(m, {cpu.get()});
    CHECK(max_diff(run_batch(m, {gpu.get(), cpu.get()}, pl), want) < 1e-4f);
    CHECK(max_diff(run_incremental(m, {gpu.get(), cpu.get()}, pl), want) < 1e-4f);
}
