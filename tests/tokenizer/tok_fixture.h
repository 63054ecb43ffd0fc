// Shared by the tokenizer tests: the real DeepSeek-V3 tokenizer from the fixtures, loaded
// once per process (tokenizer.json is 8 MB of JSON), and the golden rows.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>

#include "common.h"
#include "convert/hf_tokenizer.h"
#include "runtime/tokenizer.h"

namespace ds3::test {

inline const TokenizerData& realvocab_data(const fs::path& fixtures) {
    static TokenizerData d = hf::read_tokenizer_dir((fixtures / "v3-realvocab").string());
    return d;
}

inline const Tokenizer& realvocab_tokenizer(const fs::path& fixtures) {
    static Tokenizer t(realvocab_data(fixtures));
    return t;
}

inline const nlohmann::json& golden_rows(const fs::path& fixtures) {
    static nlohmann::json rows =
        nlohmann::json::parse(read_file(fixtures / "golden" / "tokenizer-deepseek-v3.json"));
    return rows;
}

}  // namespace ds3::test
