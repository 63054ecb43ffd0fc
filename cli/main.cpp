// The `ds3` command: a thin shell over the library. Subcommands live in cli/cmd_*.cpp.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <memory>

#include "cli/command.h"
#include "runtime/error.h"

namespace ds3::cli {
std::vector<CommandSpec>& registry() {
    static std::vector<CommandSpec> r;
    return r;
}
}  // namespace ds3::cli

int main(int argc, char** argv) {
    using namespace ds3::cli;
    CLI::App app{"ds3: run the DeepSeek-V3 family from one quantized file", "ds3"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "ds3 0.1.0");

    auto& cmds = registry();
    std::sort(cmds.begin(), cmds.end(), [](auto& a, auto& b) { return a.name < b.name; });
    std::vector<std::pair<CLI::App*, RunFn>> runs;
    for (auto& c : cmds) {
        CLI::App* sub = app.add_subcommand(c.name, c.help);
        runs.emplace_back(sub, c.setup(*sub));
    }

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    try {
        for (auto& [sub, run] : runs)
            if (sub->parsed()) return run();
    } catch (const ds3::Error& e) {
        std::fprintf(stderr, "ds3: %s\n", e.what());
        return 1;
    } catch (const std::bad_alloc&) {
        std::fprintf(stderr, "ds3: out of memory\n");
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "ds3: %s\n", e.what());
        return 1;
    }
    return 1;
}
