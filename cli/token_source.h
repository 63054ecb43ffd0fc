// Token input shared by `ds3 imatrix` and `ds3 kld`: -f TEXT (tokenised with the model
// file's own tokenizer), --tokens IDS, or --tokens-file FILE (ids separated by commas or
// whitespace). Exactly one must be given.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli/model_args.h"
#include "runtime/error.h"
#include "runtime/gguf/gguf.h"
#include "runtime/tokenizer.h"

namespace ds3::cli {

struct TokenSource {
    std::string text_file;
    std::string tokens;
    std::string tokens_file;

    void add_to(CLI::App& app) {
        app.add_option("-f,--file", text_file, "Text file, tokenised with the model's tokenizer");
        app.add_option("--tokens", tokens, "Comma-separated token ids instead of a text");
        app.add_option("--tokens-file", tokens_file, "File of token ids (comma or whitespace separated)");
    }

    // The ids; `model_path` supplies the tokenizer for -f. `cmd` names the command in errors.
    std::vector<int32_t> load(const std::string& model_path, const std::string& cmd) const {
        const int given = !text_file.empty() + !tokens.empty() + !tokens_file.empty();
        if (given != 1) throw Error("cli", cmd + ": give exactly one of -f TEXT, --tokens IDS, --tokens-file FILE");
        if (!tokens.empty()) return parse_token_ids(tokens);
        std::ifstream in(text_file.empty() ? tokens_file : text_file, std::ios::binary);
        if (!in) throw Error("cli", cmd + ": cannot open " + (text_file.empty() ? tokens_file : text_file));
        std::stringstream ss;
        ss << in.rdbuf();
        std::string s = ss.str();
        if (!tokens_file.empty()) {
            for (char& c : s)
                if (c == '\n' || c == '\r' || c == ' ' || c == '\t') c = ',';
            std::string clean;
            for (char c : s)
                if (!(c == ',' && (clean.empty() || clean.back() == ','))) clean += c;
            while (!clean.empty() && clean.back() == ',') clean.pop_back();
            return parse_token_ids(clean);
        }
        const gguf::File f = gguf::File::open(model_path);
        if (!f.has("tokenizer.ggml.model"))
            throw Error("cli", cmd + ": " + model_path + " has no tokenizer; give --tokens or --tokens-file instead of -f");
        const Tokenizer tok(read_tokenizer(f));
        EncodeOptions eo;
        eo.parse_special = false;
        eo.add_bos = true;
        std::vector<int32_t> ids = tok.encode(s, eo);
        if (ids.empty()) throw Error("cli", cmd + ": " + text_file + " gives no tokens");
        return ids;
    }
};

}  // namespace ds3::cli
