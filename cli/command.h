// Subcommand registry of the `ds3` binary. Each cli/cmd_*.cpp registers itself with a
// static Registrar, so adding a command never touches main.cpp:
//   static ds3::cli::Registrar reg{"inspect", "Show a GGUF file's metadata and tensors",
//                                  [](CLI::App& sub) { ...options...; return run_fn; }};
// The setup function declares options on `sub` and returns the function that runs the
// command (returning the process exit code). ds3::Error thrown from it is printed as one
// line on stderr and the process exits with 1.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace ds3::cli {

using RunFn = std::function<int()>;
using SetupFn = std::function<RunFn(CLI::App&)>;

struct CommandSpec {
    std::string name;
    std::string help;
    SetupFn setup;
};

std::vector<CommandSpec>& registry();

struct Registrar {
    Registrar(std::string name, std::string help, SetupFn setup) {
        registry().push_back({std::move(name), std::move(help), std::move(setup)});
    }
};

}  // namespace ds3::cli
