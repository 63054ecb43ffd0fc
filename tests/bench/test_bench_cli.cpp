// `ds3 bench` through the CLI: the JSON report on a tiny synthetic model, the table, a
// GGUF model, and the error exits.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "common.h"

using json = nlohmann::json;
using ds3::test::run_ds3;

TEST_CASE("bench: --json on a tiny synthetic model", "[bench][cli]") {
    const auto r = run_ds3({"bench", "--synthetic", "v3-tiny", "--type", "bf16", "-p", "16", "-n", "8", "-r", "2", "-t",
                            "1", "--json", "--roofline-gbs", "50"});
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    const json j = json::parse(r.out);
    CHECK(j["source"] == "synthetic");
    CHECK(j["preset"] == "v3-tiny");
    CHECK(j["type"] == "bf16");
    CHECK(j["layers"] == 4);
    CHECK(j["layers_full"] == 4);
    CHECK(j["backend"] == "cpu");
    CHECK(j["threads"] == 1);
    CHECK(j["placement"]["cpu"].get<int>() > 20);
    CHECK(j["size_bytes"].get<double>() > 1e6);
    CHECK(j["params"].get<double>() > 1e6);
    REQUIRE(j["tests"].size() == 2);
    CHECK(j["tests"][0]["test"] == "pp16");
    CHECK(j["tests"][1]["test"] == "tg8");
    for (const auto& t : j["tests"]) {
        CHECK(t["avg_ts"].get<double>() > 0);
        CHECK(t["stddev_ts"].get<double>() >= 0);
        CHECK(t["samples_ts"].size() == 2);
    }
    const json& d = j["decode"];
    CHECK(d["experts_source"] == "routes");
    CHECK(d["experts_per_moe_layer"].get<double>() == 4.0);  // v3-tiny routes 4 of 16
    CHECK(d["bytes_per_token"].get<double>() == Approx(d["weight_bytes"].get<double>() + d["cache_bytes"].get<double>()));
    CHECK(d["weight_bytes"].get<double>() < j["size_bytes"].get<double>());
    CHECK(d["cache_positions_mean"].get<double>() == 16 + 4.5);
    // (kv_lora 64 + rope 16) f32 x 4 layers per position.
    CHECK(d["cache_bytes"].get<double>() == 20.5 * 80 * 4 * 4);
    CHECK(d["roofline_gbs"].get<double>() == 50);
    CHECK(d["roofline_pct"].get<double>() == Approx(100 * d["effective_gbs"].get<double>() / 50));
    CHECK(d["effective_gbs"].get<double>() ==
          Approx(d["bytes_per_token"].get<double>() / d["seconds_per_token"].get<double>() / 1e9));
    CHECK(j["prompt_routing"]["n_tokens"] == 16);
    CHECK(j["prompt_routing"]["distinct_experts_per_layer"].get<double>() > 4);
}

TEST_CASE("bench: table output, --layers, prompt only, generation only", "[bench][cli]") {
    const auto r = run_ds3({"bench", "--synthetic", "v2-lite-tiny", "--type", "q8_0", "--layers", "2", "-p", "8", "-n",
                            "4", "-r", "1", "-t", "1", "--roofline-gbs", "10"});
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    CHECK_THAT(r.out, Catch::Contains("| model | size | params | backend | threads | test | t/s |"));
    CHECK_THAT(r.out, Catch::Contains("synthetic v2-lite-tiny Q8_0 (2/3 layers)"));
    CHECK_THAT(r.out, Catch::Contains("| pp8 |"));
    CHECK_THAT(r.out, Catch::Contains("| tg4 |"));
    CHECK_THAT(r.out, Catch::Contains("3.00 experts per MoE layer from the routes"));
    CHECK_THAT(r.out, Catch::Contains("% of 10 GB/s (--roofline-gbs)"));

    const auto pp = run_ds3({"bench", "--synthetic", "v2-lite-tiny", "-p", "8", "-n", "0", "-r", "1", "--json"});
    REQUIRE(pp.exit_code == 0);
    const json jp = json::parse(pp.out);
    CHECK(jp["tests"].size() == 1);
    CHECK_FALSE(jp.contains("decode"));

    const auto tg = run_ds3({"bench", "--synthetic", "v2-lite-tiny", "-p", "0", "-n", "3", "-r", "1", "--json",
                             "--roofline-gbs", "10"});
    REQUIRE(tg.exit_code == 0);
    const json jt = json::parse(tg.out);
    REQUIRE(jt["tests"].size() == 1);
    CHECK(jt["tests"][0]["test"] == "tg3");
    CHECK(jt["decode"]["cache_positions_mean"].get<double>() == 2.0);
    CHECK_FALSE(jt.contains("prompt_routing"));
}

TEST_CASE("bench: a GGUF model", "[bench][cli]") {
    const auto d = ds3::test::scratch_dir("bench-gguf");
    const std::string rel = (d / "v3").string(), gguf = (d / "v3.gguf").string();
    REQUIRE(run_ds3({"synth", "--preset", "v3-tiny", "-o", rel}).exit_code == 0);
    REQUIRE(run_ds3({"convert", rel, "-o", gguf, "--outtype", "bf16", "--no-tokenizer"}).exit_code == 0);
    const auto r = run_ds3({"bench", "-m", gguf, "-p", "4", "-n", "2", "-r", "1", "--json", "--roofline-gbs", "10"});
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    const json j = json::parse(r.out);
    CHECK(j["source"] == "gguf");
    CHECK(j["model"] == "v3.gguf");
    CHECK(j["layers"] == 4);
    // Same shapes and type as the synthetic v3-tiny bf16: the same byte accounting.
    const auto s = run_ds3({"bench", "--synthetic", "v3-tiny", "-p", "4", "-n", "2", "-r", "1", "--json",
                            "--roofline-gbs", "10"});
    REQUIRE(s.exit_code == 0);
    const json js = json::parse(s.out);
    CHECK(j["size_bytes"] == js["size_bytes"]);
    CHECK(j["decode"]["bytes_per_token"] == js["decode"]["bytes_per_token"]);
}

TEST_CASE("bench: errors", "[bench][cli]") {
    auto fails = [](std::vector<std::string> args, const std::string& msg) {
        args.insert(args.begin(), "bench");
        const auto r = run_ds3(args);
        INFO(r.err);
        CHECK(r.exit_code != 0);
        CHECK_THAT(r.err, Catch::Contains(msg));
    };
    fails({"-p", "4"}, "give exactly one of -m MODEL.gguf and --synthetic PRESET");
    fails({"-m", "x.gguf", "--synthetic", "v3-tiny"}, "give exactly one of");
    fails({"--synthetic", "v7"}, "[preset] unknown preset 'v7'");
    fails({"--synthetic", "v3-tiny", "--type", "q3_Z"}, "[synthetic] unknown type 'q3_Z'");
    fails({"--synthetic", "v3-tiny", "--layers", "5"}, "has 4 layers, asked for 5");
    fails({"--synthetic", "v3-tiny", "-p", "0", "-n", "0"}, "-p and -n must be non-negative and not both 0");
    fails({"--synthetic", "v3-tiny", "-p", "-3"}, "-p and -n must be non-negative");
    fails({"--synthetic", "v3-tiny", "-r", "0"}, "-r must be at least 1");
    fails({"--synthetic", "v3-tiny", "--roofline-gbs", "-1"}, "--roofline-gbs must be positive");
    fails({"--synthetic", "v3-tiny", "--backend", "tpu"}, "tpu");
    fails({"-m", "/nonexistent/x.gguf"}, "x.gguf");
}
