// ds3 quantize / imatrix / kld and the quantizing convert, on the v3-tiny fixture
// converted to f32 once per run (skipped without the fixtures).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common.h"
#include "models/runner.h"
#include "backends/backend.h"
#include "quantize/formats.h"
#include "quantize/imatrix.h"
#include "quantize/mixes.h"
#include "runtime/gguf/gguf.h"

using namespace ds3;
namespace fs = std::filesystem;

namespace {

// The fixture as f32 GGUF, converted once.
const fs::path& tiny_f32(const fs::path& fixtures) {
    static fs::path p;
    if (p.empty()) {
        const fs::path dir = test::scratch_dir("quant_model");
        p = dir / "tiny-f32.gguf";
        auto r = test::run_ds3({"convert", (fixtures / "v3-tiny").string(), "-o", p.string(), "--outtype", "f32"});
        REQUIRE(r.exit_code == 0);
    }
    return p;
}

std::vector<float> logits_of(const std::string& path, const std::vector<int32_t>& ids) {
    Deepseek2Model m = load_deepseek2(path);
    auto be = create_backend("cpu", {});
    Runner r(m, {be.get()}, 64);
    return r.eval(ids, true);
}

const std::vector<int32_t> kPrompt = {0, 17, 301, 42, 900, 5, 1000};

}  // namespace

TEST_CASE("targets, classes and fallbacks", "[quantize]") {
    using quant::TensorClass;
    auto t = quant::parse_target("q4_k_m");
    REQUIRE(t);
    CHECK(t->name == "Q4_K_M");
    CHECK(t->file_type == 15);  // LLAMA_FTYPE_MOSTLY_Q4_K_M
    CHECK(quant::parse_target("Q8_0")->file_type == 7);
    CHECK(quant::parse_target("Q2_K")->mix == quant::Mix::Q2_K);
    CHECK(quant::parse_target("fp8")->type == TypeId::FP8_E4M3_B128);
    CHECK_FALSE(quant::parse_target("q7_K"));
    CHECK(quant::classify_tensor("blk.3.attn_norm.weight", 1) == TensorClass::KeepF32);
    CHECK(quant::classify_tensor("blk.3.ffn_gate_inp.weight", 2) == TensorClass::KeepF32);
    CHECK(quant::classify_tensor("blk.3.ffn_down_exps.weight", 3) == TensorClass::ExpertDown);
    CHECK(quant::classify_tensor("blk.3.ffn_up_shexp.weight", 2) == TensorClass::SharedExpert);
    CHECK(quant::classify_tensor("blk.0.ffn_up.weight", 2) == TensorClass::DenseFfn);
    CHECK(quant::classify_tensor("blk.2.attn_k_b.weight", 3) == TensorClass::Attention);
    CHECK(quant::classify_tensor("output.weight", 2) == TensorClass::Output);
    // Routed experts get the fewest bits; attention more; rows that do not fit fall back.
    const auto q4 = *quant::parse_target("Q4_K_M");
    CHECK(quant::choose_type(q4, "blk.5.ffn_gate_exps.weight", {512, 256, 8}, 24).type == TypeId::Q4_K);
    CHECK(quant::choose_type(q4, "blk.5.attn_q_b.weight", {512, 256}, 24).type == TypeId::Q6_K);
    CHECK(quant::choose_type(q4, "blk.0.ffn_down_exps.weight", {512, 256, 8}, 24).type == TypeId::Q6_K);  // use_more_bits
    CHECK(quant::choose_type(q4, "blk.4.ffn_down_exps.weight", {512, 256, 8}, 24).type == TypeId::Q4_K);
    const auto fb = quant::choose_type(q4, "blk.5.ffn_gate_exps.weight", {96, 256, 8}, 24);
    CHECK(fb.wanted == TypeId::Q4_K);
    CHECK(fb.type == TypeId::Q4_0);
    CHECK(quant::fallback_type(TypeId::Q6_K, 96) == TypeId::Q8_0);
    CHECK(quant::fallback_type(TypeId::Q8_0, 48) == TypeId::F16);
    CHECK(quant::fallback_type(TypeId::FP8_E4M3_B128, 64) == TypeId::BF16);
    CHECK(quant::choose_type(q4, "blk.5.attn_norm.weight", {512}, 24).type == TypeId::F32);
    // Float targets keep the embeddings F32 (what convert --outtype bf16 writes).
    CHECK(quant::choose_type(*quant::parse_target("bf16"), "token_embd.weight", {512, 100}, 24).type == TypeId::F32);

    quant::TypeOverrides ov;
    ov.add("blk\\.[0-9]+\\.ffn_.*_exps\\.weight=q8_0");
    CHECK(quant::choose_type(q4, "blk.5.ffn_up_exps.weight", {512, 256, 8}, 24, &ov).type == TypeId::Q8_0);
    CHECK(quant::choose_type(q4, "blk.5.ffn_up_exps.weight.x", {512, 256, 8}, 24, &ov).type == TypeId::Q4_K);  // whole name
    CHECK_THROWS_WITH(ov.add("blk.(=q4_K"), Catch::Contains("bad regex"));
    CHECK_THROWS_WITH(ov.add("output=q9_K"), Catch::Contains("unknown type 'q9_K'"));
    CHECK_THROWS_WITH(ov.add("no-equals"), Catch::Contains("REGEX=TYPE"));
    CHECK_THROWS_WITH(ov.add("output=q8_K"), Catch::Contains("unknown type"));  // activation-only
}

TEST_CASE("quantize the fixture to every mix and type; the files load and run", "[quantize][conformance]") {
    DS3_REQUIRE_FIXTURES(fx);
    const fs::path f32 = tiny_f32(fx);
    const fs::path dir = test::scratch_dir("quant_all");
    const std::vector<float> ref = logits_of(f32.string(), kPrompt);
    for (const char* t : {"Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "q4_0", "q3_K", "q4_K", "q5_K",
                          "iq4_xs", "fp8", "bf16", "f16"}) {
        INFO(t);
        const fs::path out = dir / (std::string(t) + ".gguf");
        auto r = test::run_ds3({"quantize", f32.string(), out.string(), t, "-t", "2"});
        REQUIRE(r.exit_code == 0);
        const gguf::File f = gguf::File::open(out.string());
        CHECK(f.get_u64("general.file_type") == quant::parse_target(t)->file_type);
        CHECK(f.get_u64("general.quantization_version") == 2);
        CHECK(f.get_string("general.architecture") == "deepseek2");
        CHECK(f.tensor("blk.1.ffn_norm.weight").type == TypeId::F32);
        CHECK(f.tensor("blk.1.ffn_gate_inp.weight").type == TypeId::F32);
        const std::vector<float> lg = logits_of(out.string(), kPrompt);
        REQUIRE(lg.size() == ref.size());
        bool finite = true;
        for (float v : lg) finite = finite && std::isfinite(v);
        CHECK(finite);
        if (std::string(t) == "Q8_0") {
            // The first token (BOS alone) has no routing margin to cross: Q8_0 stays
            // within 0.2 of logits whose spread is about 1 (measured 0.094).
            double d = 0;
            for (size_t i = 0; i < 1024; ++i) d = std::max(d, double(std::fabs(lg[i] - ref[i])));
            CHECK(d < 0.2);
            CHECK(f.tensor("blk.1.ffn_up_exps.weight").type == TypeId::Q8_0);
        }
        if (std::string(t) == "Q4_K_M") {
            CHECK(f.tensor("blk.1.ffn_up_exps.weight").type == TypeId::Q4_K);   // rows of 256
            CHECK(f.tensor("blk.1.ffn_down_exps.weight").type == TypeId::Q4_0);  // rows of 64: fallback
            CHECK(f.tensor("blk.1.attn_kv_a_mqa.weight").type == TypeId::Q6_K);
        }
    }
}

TEST_CASE("--tensor-type overrides and quantize errors", "[quantize][conformance]") {
    DS3_REQUIRE_FIXTURES(fx);
    const fs::path f32 = tiny_f32(fx);
    const fs::path dir = test::scratch_dir("quant_err");
    const fs::path out = dir / "o.gguf";
    auto r = test::run_ds3({"quantize", f32.string(), out.string(), "Q4_K_M", "--tensor-type", "output\\.weight=q8_0",
                            "--tensor-type", "blk\\.2\\..*_exps\\.weight=bf16"});
    REQUIRE(r.exit_code == 0);
    {
        const gguf::File f = gguf::File::open(out.string());
        CHECK(f.tensor("output.weight").type == TypeId::Q8_0);
        CHECK(f.tensor("blk.2.ffn_gate_exps.weight").type == TypeId::BF16);
        CHECK(f.tensor("blk.3.ffn_gate_exps.weight").type == TypeId::Q4_K);
        CHECK(f.get_string("ds3.quantize.type") == "Q4_K_M");
    }
    fs::remove(out);
    r = test::run_ds3({"quantize", f32.string(), out.string(), "Q9_K"});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains("unknown TYPE 'Q9_K'"));
    r = test::run_ds3({"quantize", f32.string(), out.string(), "Q4_K_M", "--tensor-type", "(=q4_K"});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains("bad regex"));
    r = test::run_ds3({"quantize", (dir / "missing.gguf").string(), out.string(), "Q4_K_M"});
    CHECK(r.exit_code != 0);
    r = test::run_ds3({"quantize", f32.string(), f32.string(), "Q4_K_M"});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains("overwrite the input"));
    // A GGUF that is not a deepseek2 model.
    const fs::path other = dir / "other.gguf";
    {
        gguf::Writer w(other.string());
        w.set_kv("general.architecture", gguf::Value::str("llama"));
        w.write_header();
        w.finish();
    }
    r = test::run_ds3({"quantize", other.string(), out.string(), "Q4_K_M"});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains("expected deepseek2"));
    CHECK_FALSE(fs::exists(out));
    r = test::run_ds3({"quantize", f32.string(), out.string(), "Q4_K_M", "--imatrix", other.string()});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains("expected 'imatrix'"));
}

TEST_CASE("imatrix: collect, round trip, per-expert counts, and it changes the quantization", "[imatrix][conformance]") {
    DS3_REQUIRE_FIXTURES(fx);
    const fs::path f32 = tiny_f32(fx);
    const fs::path dir = test::scratch_dir("quant_im");
    const fs::path imf = dir / "im.gguf";
    std::string ids;
    for (int i = 0; i < 96; ++i) {
        if (i) ids += ',';
        ids += std::to_string((i * 37 + 11) % 1024);
    }
    auto r = test::run_ds3({"imatrix", "-m", f32.string(), "--tokens", ids, "-o", imf.string(), "-c", "40", "-t", "2"});
    REQUIRE(r.exit_code == 0);
    const quant::Imatrix im = quant::Imatrix::load(imf.string());
    CHECK(im.chunk_count == 2);  // 96 tokens in chunks of 40: two whole chunks
    CHECK(im.n_tokens == 80);
    const auto& gate = im.entries.at("blk.1.ffn_gate_exps.weight");
    CHECK(gate.n_mat == 16);
    CHECK(gate.ne0 == 256);
    double routed = 0;
    for (int e = 0; e < 16; ++e) {
        routed += gate.counts[size_t(e)];
        CHECK(gate.counts[size_t(e)] == im.expert_tokens[size_t(1 * 16 + e)]);
        CHECK(im.entries.at("blk.1.ffn_down_exps.weight").counts[size_t(e)] == gate.counts[size_t(e)]);
    }
    CHECK(routed == 80 * 4);  // every token to k = 4 experts
    CHECK(im.entries.at("blk.0.ffn_down.weight").counts[0] == 80);
    CHECK(im.entries.at("blk.0.ffn_down.weight").ne0 == 384);
    CHECK(im.entries.at("blk.2.attn_k_b.weight").n_mat == 4);  // per head
    // W_vb's inputs, the attended latents, per head: every token of every chunk.
    const auto& vb = im.entries.at("blk.2.attn_v_b.weight");
    CHECK(vb.n_mat == 4);
    for (int h = 0; h < 4; ++h) CHECK(vb.counts[size_t(h)] == 80);
    for (double v : vb.in_sum2) {
        REQUIRE(std::isfinite(v));
        REQUIRE(v > 0);
    }
    {
        // The same token twice: layer 0's latent rows are then equal (no position enters
        // them), so whatever the attention weights, W_vb's input is that latent for both
        // tokens and every head: Σx² = 2·latent² — the collector's re-run attention
        // against `ds3 eval`.
        const fs::path one = dir / "one.gguf", dump = dir / "dump";
        REQUIRE(test::run_ds3({"imatrix", "-m", f32.string(), "--tokens", "77,77", "-o", one.string(), "-t", "2"})
                    .exit_code == 0);
        REQUIRE(test::run_ds3({"eval", "-m", f32.string(), "--tokens", "77,77", "--dump", "l0.kv_latent", "--dump-dir",
                               dump.string(), "--logits-out", (dir / "logits.f32").string()})
                    .exit_code == 0);
        const std::string raw = test::read_file(dump / "l0.kv_latent.f32");
        std::vector<float> lat(raw.size() / 4);
        std::memcpy(lat.data(), raw.data(), lat.size() * 4);
        const size_t L = lat.size() / 2;  // [2 tokens][kv_lora]
        for (size_t j = 0; j < L; ++j) REQUIRE(lat[j] == lat[L + j]);
        const quant::Imatrix im1 = quant::Imatrix::load(one.string());
        const auto& e = im1.entries.at("blk.0.attn_v_b.weight");
        REQUIRE(e.ne0 == int64_t(L));
        for (int64_t h = 0; h < e.n_mat; ++h)
            for (size_t j = 0; j < L; ++j)
                REQUIRE(e.in_sum2[size_t(h) * L + j] == Approx(2.0 * lat[j] * lat[j]).epsilon(1e-5).margin(1e-12));
    }
    {
        // Collected on the CPU only: another backend is refused, not silently ignored.
        const fs::path none = dir / "none.gguf";
        auto rb = test::run_ds3({"imatrix", "-m", f32.string(), "--tokens", "77,77", "-o", none.string(), "--backend",
                                 "cuda"});
        CHECK(rb.exit_code != 0);
        CHECK_THAT(rb.err, Catch::Contains("CPU backend only"));
        CHECK_FALSE(fs::exists(none));
    }
    CHECK(im.entries.at("output.weight").counts[0] == 80);
    std::vector<float> imp;
    REQUIRE(im.importance("blk.0.attn_q_a.weight", 0, 256, imp));
    CHECK(imp.size() == 256);
    CHECK_THROWS_WITH(im.importance("blk.0.attn_q_a.weight", 0, 128, imp), Catch::Contains("another model"));
    // Round trip through the file.
    const fs::path im2 = dir / "im2.gguf";
    im.save(im2.string());
    const quant::Imatrix back = quant::Imatrix::load(im2.string());
    REQUIRE(back.entries.size() == im.entries.size());
    for (const auto& [name, e] : im.entries) {
        const auto& b = back.entries.at(name);
        CHECK(b.counts == e.counts);
        for (size_t i = 0; i < e.in_sum2.size(); ++i) REQUIRE(b.in_sum2[i] == float(e.in_sum2[i]));
    }
    // --imatrix changes the quantized bytes of the weighted formats.
    const fs::path a = dir / "a.gguf", b = dir / "b.gguf";
    REQUIRE(test::run_ds3({"quantize", f32.string(), a.string(), "Q3_K_M"}).exit_code == 0);
    REQUIRE(test::run_ds3({"quantize", f32.string(), b.string(), "Q3_K_M", "--imatrix", imf.string()}).exit_code == 0);
    const gguf::File fa = gguf::File::open(a.string()), fb = gguf::File::open(b.string());
    const auto& ta = fa.tensor("blk.1.ffn_up_exps.weight");
    const auto& tb = fb.tensor("blk.1.ffn_up_exps.weight");
    CHECK(std::memcmp(fa.tensor_data(ta).data(), fb.tensor_data(tb).data(), ta.nbytes) != 0);
    CHECK(fb.get_string("quantize.imatrix.file") == "im.gguf");
    CHECK_FALSE(fa.has("quantize.imatrix.file"));
}

TEST_CASE("kld of a file against itself is zero with full agreement", "[kld][conformance]") {
    DS3_REQUIRE_FIXTURES(fx);
    const fs::path f32 = tiny_f32(fx);
    auto r = test::run_ds3({"kld", "-m", f32.string(), "--reference", f32.string(), "--tokens",
                            "0,5,17,300,42,900,1000,3,77,8", "-c", "6", "--json"});
    REQUIRE(r.exit_code == 0);
    CHECK_THAT(r.out, Catch::Contains("\"kld_mean\": 0.0"));
    CHECK_THAT(r.out, Catch::Contains("\"top1_agreement\": 1.0"));
    CHECK_THAT(r.out, Catch::Contains("\"ppl_ratio\": 1.0"));
    CHECK_THAT(r.out, Catch::Contains("\"tokens\": 10"));
    r = test::run_ds3({"kld", "-m", f32.string(), "--reference", f32.string(), "-f", f32.string()});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains("has no tokenizer"));
    r = test::run_ds3({"kld", "-m", f32.string(), "--reference", f32.string()});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains("exactly one of"));
}

TEST_CASE("kld --score-from scores only the later positions of each chunk", "[kld][conformance]") {
    DS3_REQUIRE_FIXTURES(fx);
    const fs::path f32 = tiny_f32(fx);
    const fs::path dir = test::scratch_dir("quant_kld_from");
    const fs::path q = dir / "q4.gguf";
    REQUIRE(test::run_ds3({"quantize", f32.string(), q.string(), "q4_0"}).exit_code == 0);
    auto kld = [&](const fs::path& m, const std::string& ids, const std::string& c, const std::string& from) {
        auto r = test::run_ds3({"kld", "-m", m.string(), "--reference", f32.string(), "--tokens", ids, "-c", c,
                                "--score-from", from, "--json"});
        INFO(r.err);
        REQUIRE(r.exit_code == 0);
        return nlohmann::json::parse(r.out);
    };
    // 11 tokens in chunks of 5: 5 + 5 + 1. From 2: positions 2..4 of the full chunks; the
    // last chunk (1 token) is all context.
    const std::string ids = "0,5,17,300,42,900,1000,3,77,8,123";
    auto j = kld(f32, ids, "5", "2");
    CHECK(j["tokens"] == 6);
    CHECK(j["tokens_evaluated"] == 11);
    CHECK(j["score_from"] == 2);
    CHECK(j["targets"] == 4);  // positions 2, 3 of each full chunk have a next token there
    CHECK(j["kld_mean"] == 0.0);
    CHECK(j["top1_agreement"] == 1.0);
    CHECK(j["ppl_ratio"] == 1.0);
    CHECK_THAT(j["scoring"].get<std::string>(), Catch::Contains("the first 2 are context only"));
    CHECK(kld(f32, ids, "5", "0")["tokens"] == 11);

    // Causality: the first 2 positions of a chunk see the same context as a chunk of 2
    // tokens, so the KL sums add up: all positions = positions 0..1 + positions 2..4 (to
    // float rounding: a batch of 2 and one of 5 round differently; scoring the wrong
    // positions would be off by far more).
    const std::string chunk = "0,5,17,300,42";
    auto all = kld(q, chunk, "5", "0"), head = kld(q, "0,5", "5", "0"), tail = kld(q, chunk, "5", "2");
    REQUIRE(all["tokens"] == 5);
    REQUIRE(head["tokens"] == 2);
    REQUIRE(tail["tokens"] == 3);
    const double sum_all = 5 * all["kld_mean"].get<double>();
    CHECK(sum_all > 1e-4);  // q4_0 really differs, so the check below means something
    CHECK(sum_all == Approx(2 * head["kld_mean"].get<double>() + 3 * tail["kld_mean"].get<double>()).epsilon(1e-6));
    const double agree_all = 5 * all["top1_agreement"].get<double>();
    CHECK(agree_all == Approx(2 * head["top1_agreement"].get<double>() + 3 * tail["top1_agreement"].get<double>()));

    // Errors: K must leave each chunk a scored position, and the text must reach one.
    auto r = test::run_ds3({"kld", "-m", f32.string(), "--reference", f32.string(), "--tokens", ids, "-c", "5",
                            "--score-from", "5"});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains("--score-from must be in [0, -c)"));
    r = test::run_ds3({"kld", "-m", f32.string(), "--reference", f32.string(), "--tokens", ids, "-c", "5",
                       "--score-from", "-1"});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains("--score-from must be in [0, -c)"));
    r = test::run_ds3({"kld", "-m", f32.string(), "--reference", f32.string(), "--tokens", "0,5,17", "-c", "5",
                       "--score-from", "3"});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains("3 tokens leave no position to score with --score-from 3"));
    // The text output says which convention was used.
    r = test::run_ds3({"kld", "-m", f32.string(), "--reference", f32.string(), "--tokens", ids, "-c", "5",
                       "--score-from", "2"});
    REQUIRE(r.exit_code == 0);
    CHECK_THAT(r.out, Catch::Contains("6 scored of 11"));
    CHECK_THAT(r.out, Catch::Contains("standard error 0.00%"));
}

TEST_CASE("one-pass convert equals convert-then-quantize; fp8 keeps the release's bytes", "[convert][conformance]") {
    DS3_REQUIRE_FIXTURES(fx);
    const fs::path f32 = tiny_f32(fx);
    const fs::path dir = test::scratch_dir("quant_conv");
    const fs::path one = dir / "one.gguf", two = dir / "two.gguf";
    REQUIRE(test::run_ds3({"convert", (fx / "v3-tiny").string(), "-o", one.string(), "--outtype", "Q8_0"}).exit_code == 0);
    REQUIRE(test::run_ds3({"quantize", f32.string(), two.string(), "Q8_0"}).exit_code == 0);
    CHECK(test::read_file(one) == test::read_file(two));

    const fs::path fp8 = dir / "fp8.gguf";
    REQUIRE(test::run_ds3({"convert", (fx / "v3-tiny").string(), "-o", fp8.string(), "--outtype", "fp8"}).exit_code == 0);
    const gguf::File f8 = gguf::File::open(fp8.string()), ff = gguf::File::open(f32.string());
    CHECK(f8.tensor("blk.1.ffn_gate_exps.weight").type == TypeId::FP8_E4M3_B128);
    CHECK(f8.tensor("blk.1.attn_k_b.weight").type == TypeId::BF16);  // rows of 32: fallback
    CHECK(f8.tensor("output.weight").type == TypeId::BF16);
    // Kept bytes: the FP8 values times their tile scales are the release's values exactly.
    for (const char* n : {"blk.1.ffn_gate_exps.weight", "blk.0.attn_q_a.weight", "blk.2.attn_kv_a_mqa.weight"}) {
        INFO(n);
        const auto& t8 = f8.tensor(n);
        REQUIRE(t8.type == TypeId::FP8_E4M3_B128);
        std::vector<float> deq(t8.n_elements());
        const int64_t row = int64_t(t8.ne[0]);
        const uint64_t rb = t8.nbytes / (t8.n_elements() / t8.ne[0]);
        for (uint64_t r = 0; r < t8.n_elements() / t8.ne[0]; ++r)
            dequantize_row(t8.type, f8.tensor_data(t8).data() + r * rb, deq.data() + r * row, row);
        CHECK(std::memcmp(deq.data(), ff.tensor_data(ff.tensor(n)).data(), deq.size() * 4) == 0);
    }
    auto r = test::run_ds3({"convert", (fx / "v3-tiny").string(), "-o", (dir / "x.gguf").string(), "--outtype", "q9"});
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.err, Catch::Contains("Q4_K_M"));
}
