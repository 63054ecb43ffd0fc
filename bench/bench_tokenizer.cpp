// bench_tokenizer MODEL [MB | FILE]: encode and decode speed on mixed text (English prose,
// code, Chinese and Japanese, numbers, emoji), MB megabytes of it (default 1), or on the
// contents of FILE. MODEL is a GGUF
// with tokenizer keys or a Hugging Face tokenizer directory. The text is generated from a
// fixed seed so runs are comparable. Reported: a cold run (empty piece cache) and a warm
// one, then decoding the ids back (checked to round-trip).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <random>
#include <string>
#include <vector>

#include "convert/hf_tokenizer.h"
#include "runtime/error.h"
#include "runtime/gguf/gguf.h"
#include "runtime/tokenizer.h"

namespace {

std::string mixed_text(size_t bytes) {
    static const char* const parts[] = {
        "The quick brown fox jumps over the lazy dog. ",
        "In 2024, DeepSeek-V3 activated 37B of its 671B parameters per token. ",
        "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }\n",
        "def f(x):\n    return {'k': x ** 2, \"v\": [1, 2, 3]}\n",
        "深度求索发布了新的大语言模型，在数学和编程任务上表现出色。",
        "日本語のテキストとカタカナ、ひらがなを混ぜた文章です。",
        "3.14159265358979 2.718281828 1,000,000.00 -42 0x1F ",
        "Emoji 😀🎉🚀 and accents àéîõü ñ ç ß. ",
        "    indented line with trailing spaces   \n",
        "https://github.com/deepseek-ai/DeepSeek-V3?tab=readme#top ",
        "Привет, мир! Как дела? ",
    };
    std::mt19937_64 rng(2024);
    std::string s;
    s.reserve(bytes + 256);
    while (s.size() < bytes) {
        s += parts[rng() % (sizeof parts / sizeof parts[0])];
        // Sprinkle numbers so that not every piece is a cache hit.
        if (rng() % 4 == 0) s += std::to_string(rng() % 100000) + " ";
    }
    s.resize(bytes);
    // Do not end inside a UTF-8 character.
    while (!s.empty() && (static_cast<unsigned char>(s.back()) & 0xC0) == 0x80) s.pop_back();
    if (!s.empty() && static_cast<unsigned char>(s.back()) >= 0xC0) s.pop_back();
    return s;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: bench_tokenizer MODEL.gguf|TOKENIZER_DIR [MB | TEXT_FILE]\n");
        return 2;
    }
    try {
        std::string text_file = argc > 2 && std::filesystem::is_regular_file(argv[2]) ? argv[2] : "";
        double mb = argc > 2 && text_file.empty() ? std::atof(argv[2]) : 1.0;
        if (!(mb > 0)) throw ds3::Error("bench", "MB must be positive, or give a text file");
        std::string path = argv[1];
        auto t0 = std::chrono::steady_clock::now();
        ds3::TokenizerData data = std::filesystem::is_directory(path)
                                      ? ds3::hf::read_tokenizer_dir(path)
                                      : ds3::read_tokenizer(ds3::gguf::File::open(path));
        ds3::Tokenizer tok(std::move(data));
        double t_load = seconds_since(t0);

        std::string text;
        if (text_file.empty()) {
            text = mixed_text(static_cast<size_t>(mb * 1024 * 1024));
        } else {
            std::ifstream in(text_file, std::ios::binary);
            std::stringstream ss;
            ss << in.rdbuf();
            text = ss.str();
        }
        const double size_mb = text.size() / (1024.0 * 1024.0);
        t0 = std::chrono::steady_clock::now();
        std::vector<int32_t> ids = tok.encode(text);
        double t_cold = seconds_since(t0);
        t0 = std::chrono::steady_clock::now();
        std::vector<int32_t> ids2 = tok.encode(text);
        double t_warm = seconds_since(t0);
        t0 = std::chrono::steady_clock::now();
        std::string back = tok.decode(ids);
        double t_dec = seconds_since(t0);
        if (ids != ids2 || back != ds3::utf8_lossy(text)) throw ds3::Error("bench", "round trip failed");

        std::printf("load      %.3f s (%d tokens)\n", t_load, tok.n_vocab());
        std::printf("text      %.2f MB, %zu tokens (%.2f bytes/token)\n", size_mb, ids.size(),
                    static_cast<double>(text.size()) / ids.size());
        std::printf("encode    cold %.3f s (%.2f MB/s, %.0f tok/s), warm %.3f s (%.2f MB/s)\n", t_cold,
                    size_mb / t_cold, ids.size() / t_cold, t_warm, size_mb / t_warm);
        std::printf("decode    %.3f s (%.0f tok/s)\n", t_dec, ids.size() / t_dec);
        return 0;
    } catch (const ds3::Error& e) {
        std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
        return 1;
    }
}
