// The soft SIGINT mode of runtime/signals.h (chat): SIGINT counts instead of exiting, a
// third one not taken falls back to cleanup-and-exit (130), SIGTERM still cleans up.
// Each case runs in a forked child so the test process keeps its own handlers.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "common.h"
#include "runtime/signals.h"

using namespace ds3;
using namespace ds3::test;

namespace {
// Runs fn in a child; returns its exit status (128 + signal when killed).
template <class F>
int in_child(F fn) {
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) _exit(fn());
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
}  // namespace

TEST_CASE("soft interrupt: SIGINT counts, take resets, a third untaken one exits", "[signals][chat]") {
    const fs::path tmp = scratch_dir("soft-int") / "partial.tmp";
    write_file(tmp, "x");
    const int code = in_child([&] {
        install_soft_interrupt();
        install_interrupt_handler();  // idempotent: does not undo soft mode
        if (interrupt_count() != 0) return 10;
        raise(SIGINT);
        if (interrupt_count() != 1) return 11;
        if (take_interrupts() != 1 || interrupt_count() != 0) return 12;
        raise(SIGINT);
        raise(SIGINT);
        if (interrupt_count() != 2) return 13;
        register_temp_file(tmp.string());
        raise(SIGINT);  // the third, untaken: remove temp files and exit 130
        return 14;
    });
    CHECK(code == 130);
    CHECK(!fs::exists(tmp));
}

TEST_CASE("soft interrupt: SIGTERM still removes temp files and exits", "[signals][chat]") {
    const fs::path tmp = scratch_dir("soft-term") / "partial.tmp";
    write_file(tmp, "x");
    const int code = in_child([&] {
        install_soft_interrupt();
        register_temp_file(tmp.string());
        raise(SIGTERM);
        return 14;
    });
    CHECK(code == 128 + SIGTERM);
    CHECK(!fs::exists(tmp));
}
