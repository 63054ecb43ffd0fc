// Writes the fuzz seed corpus: small valid GGUF files covering every value type, nested
// arrays, several alignments and tensor types, plus truncated copies of some of them.
//   gguf_make_corpus OUT_DIR
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "runtime/gguf/gguf.h"

using namespace ds3;
using namespace ds3::gguf;
namespace fs = std::filesystem;

namespace {

void data_for(Writer& w) {
    w.write_header();
    uint8_t seed = 0;
    for (const auto& t : w.tensors()) {
        std::vector<uint8_t> d(t.nbytes);
        for (size_t i = 0; i < d.size(); ++i) d[i] = static_cast<uint8_t>(seed + i);
        ++seed;
        w.write_tensor_data(d);
    }
    w.finish();
}

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

void truncated(const fs::path& src, const fs::path& dst, size_t n) {
    const std::string s = slurp(src);
    std::ofstream(dst, std::ios::binary).write(s.data(), static_cast<std::streamsize>(std::min(n, s.size())));
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
        return 2;
    }
    const fs::path out = argv[1];
    try {
        fs::create_directories(out);
        {
            Writer w((out / "empty.gguf").string());
            data_for(w);
        }
        {
            Writer w((out / "values.gguf").string());
            w.set_kv("general.architecture", Value::str("deepseek2"));
            w.set_kv("u8", Value::u8(7));
            w.set_kv("i8", Value::i8(-7));
            w.set_kv("u16", Value::u16(700));
            w.set_kv("i16", Value::i16(-700));
            w.set_kv("u32", Value::u32(70000));
            w.set_kv("i32", Value::i32(-70000));
            w.set_kv("u64", Value::u64(1ull << 40));
            w.set_kv("i64", Value::i64(-(1ll << 40)));
            w.set_kv("f32", Value::f32(0.5f));
            w.set_kv("f64", Value::f64(0.25));
            w.set_kv("b", Value::boolean(true));
            w.set_kv("s", Value::str("text"));
            w.set_kv("empty_s", Value::str(""));
            w.set_kv("empty_a", Value::array(ValueType::UINT32, {}));
            w.set_kv("nested", Value::array(ValueType::ARRAY, {Value::i32s({1, 2}), Value::strings({"a", "b"})}));
            w.add_tensor("token_embd.weight", {5, 3}, TypeId::F32);
            data_for(w);
        }
        {
            Writer w((out / "types_align64.gguf").string(), 64);
            w.add_tensor("a", {32, 2}, TypeId::Q8_0);
            w.add_tensor("b", {3}, TypeId::F16);
            w.add_tensor("c", {2, 1, 1, 2}, TypeId::BF16);
            w.add_tensor("d", {0, 3}, TypeId::F32);
            w.add_tensor("e", {32}, TypeId::Q4_0);
            data_for(w);
        }
        {
            Writer w((out / "align1.gguf").string(), 1);
            w.set_kv("deep", Value::array(ValueType::ARRAY,
                                          {Value::array(ValueType::ARRAY, {Value::array(ValueType::UINT8, {Value::u8(1)})})}));
            w.add_tensor("x", {3}, TypeId::I8);
            w.add_tensor("y", {1}, TypeId::I16);
            data_for(w);
        }
        {
            Writer w((out / "tokens.gguf").string());
            w.set_kv("general.architecture", Value::str("deepseek2"));
            std::vector<std::string> toks;
            for (int i = 0; i < 40; ++i) {
                std::string t = "t";  // not "t" + to_string(i): GCC 12 warns falsely (-Wrestrict)
                t += std::to_string(i);
                toks.push_back(t);
            }
            w.set_kv("tokenizer.ggml.tokens", Value::strings(toks));
            w.set_kv("tokenizer.ggml.token_type", Value::i32s(std::vector<int32_t>(40, 1)));
            w.set_kv("tokenizer.ggml.scores", Value::f32s(std::vector<float>(40, 0.0f)));
            w.add_tensor("output_norm.weight", {4}, TypeId::F32);
            data_for(w);
        }
        truncated(out / "values.gguf", out / "values_cut_header.gguf", 200);
        truncated(out / "values.gguf", out / "values_cut_4.gguf", 4);
        truncated(out / "types_align64.gguf", out / "types_cut_infos.gguf", 120);
        truncated(out / "types_align64.gguf", out / "types_cut_data.gguf", slurp(out / "types_align64.gguf").size() - 70);
        truncated(out / "tokens.gguf", out / "tokens_cut.gguf", 333);
    } catch (const Error& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
    return 0;
}
