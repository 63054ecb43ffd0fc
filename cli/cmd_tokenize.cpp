// `ds3 tokenize -m MODEL (--text STR | --file F) [--json] [--show-pieces] [--no-special]`:
// the token ids of a text under the model's tokenizer. MODEL is a GGUF file, or (for
// convenience) a Hugging Face directory with tokenizer.json.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/inputs.h"
#include "runtime/error.h"
#include "runtime/tokenizer.h"

namespace {

using namespace ds3;

struct Args {
    std::string model, text, file;
    bool json = false, pieces = false, no_special = false, bos = false;
};

cli::Registrar reg{"tokenize", "Print the token ids of a text", [](CLI::App& sub) {
    auto a = std::make_shared<Args>();
    sub.add_option("-m,--model", a->model, "Model file (GGUF) or Hugging Face directory")->required();
    auto* text = sub.add_option("--text", a->text, "Text to tokenize");
    auto* file = sub.add_option("--file", a->file, "File whose contents to tokenize");
    text->excludes(file);
    sub.add_flag("--json", a->json, "Print a JSON array of ids");
    sub.add_flag("--show-pieces", a->pieces, "Print each token's id and decoded text, one per line");
    sub.add_flag("--no-special", a->no_special,
                 "Treat special/added tokens written in the text as plain text (untrusted input)");
    sub.add_flag("--add-bos", a->bos, "Prepend the BOS token");
    return [a, text, file]() {
        if (text->count() == 0 && file->count() == 0) throw Error("cli", "tokenize: give --text or --file");
        std::string input = a->text;
        if (file->count()) input = cli::read_whole_file(a->file, "tokenize");
        Tokenizer tok(cli::load_tokenizer_data(a->model));
        EncodeOptions opt;
        opt.parse_special = !a->no_special;
        opt.add_bos = a->bos;
        std::vector<int32_t> ids = tok.encode(input, opt);
        if (a->pieces) {
            for (int32_t id : ids) {
                // The piece's own bytes may be part of a character; show them repaired.
                std::string piece = utf8_lossy(tok.token_bytes(id));
                std::printf("%d\t%s\n", id, nlohmann::json(piece).dump().c_str());
            }
        } else if (a->json) {
            std::printf("%s\n", nlohmann::json(ids).dump().c_str());
        } else {
            std::string line;
            for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
            std::printf("%s\n", line.c_str());
        }
        return 0;
    };
}};

}  // namespace
