// Inputs several commands read: a whole file given on the command line, and a tokenizer
// from a model path that is either a GGUF file or a Hugging Face directory.
#pragma once

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "convert/hf_tokenizer.h"
#include "runtime/error.h"
#include "runtime/gguf/gguf.h"
#include "runtime/tokenizer_data.h"

namespace ds3::cli {

// The bytes of `path`; Error("cli", "<what>: cannot open <path>") when it cannot be read.
inline std::string read_whole_file(const std::string& path, const std::string& what) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("cli", what + ": cannot open " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// A directory is read as a Hugging Face checkpoint (tokenizer.json), anything else as GGUF.
inline TokenizerData load_tokenizer_data(const std::string& path) {
    if (std::filesystem::is_directory(path)) return hf::read_tokenizer_dir(path);
    return read_tokenizer(gguf::File::open(path));
}

}  // namespace ds3::cli
