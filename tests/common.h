// Helpers shared by the tests: where the fixtures are, scratch directories, running the
// ds3 binary. Fixture-based tests call fixtures_or_skip() first: without
// ../shared/fixtures they log a warning and pass without asserting anything else.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace ds3::test {

namespace fs = std::filesystem;

// ../shared/fixtures, or nullopt when the folder is absent (a plain clone).
std::optional<fs::path> fixtures_dir();

// A fresh, empty directory under the build tree, removed at process exit.
fs::path scratch_dir(const std::string& tag);

struct RunResult {
    int exit_code = -1;
    std::string out;  // stdout
    std::string err;  // stderr
};
// Runs the ds3 binary with `args` (no shell), capturing stdout and stderr; `stdin_text`
// is fed on its standard input.
RunResult run_ds3(const std::vector<std::string>& args, const std::string& stdin_text = "");

std::string read_file(const fs::path& p);
void write_file(const fs::path& p, const std::string& bytes);

}  // namespace ds3::test

// Skips the rest of a test case when the fixtures are absent.
#define DS3_REQUIRE_FIXTURES(var)                                              \
    auto var##_opt = ::ds3::test::fixtures_dir();                             \
    if (!var##_opt) {                                                          \
        WARN("skipped: ../shared/fixtures is absent");                         \
        return;                                                                \
    }                                                                          \
    const ::ds3::test::fs::path var = *var##_opt
