// `ds3 version`: build configuration, for bug reports.
#include <cstdio>

#include "cli/command.h"

namespace {
ds3::cli::Registrar reg{"version", "Print the version and build configuration", [](CLI::App&) {
    return []() {
        std::printf("ds3 0.1.0\n");
        return 0;
    };
}};
}  // namespace
