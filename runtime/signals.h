// Ctrl-C safety for commands that write files: a process-wide registry of temporary
// files, and a SIGINT/SIGTERM handler that unlinks them and exits. The GGUF Writer
// registers its temporary file itself; a command that writes (convert, quantize) only
// calls install_interrupt_handler() once at start.
//
// The handler is async-signal-safe: paths live in a fixed table of slots (no allocation
// in the handler), removed with unlink(), then _exit(128 + signal) (130 for SIGINT).
#pragma once

#include <string>

namespace ds3 {

// Installs the SIGINT/SIGTERM handler. Idempotent; safe to call from any command.
void install_interrupt_handler();

// Registers `path` for removal on interrupt; returns a slot id to unregister with, or -1
// when the table is full or the path too long (the file is then simply not cleaned up on
// Ctrl-C; normal error paths still remove it).
int register_temp_file(const std::string& path);
// Forgets a slot (after the file was renamed into place or removed). -1 is ignored.
void unregister_temp_file(int slot);

// RAII form: registers in the constructor, unregisters in the destructor (it does not
// remove the file; the owner does that).
class TempFileGuard {
public:
    explicit TempFileGuard(const std::string& path) : slot_(register_temp_file(path)) {}
    TempFileGuard(const TempFileGuard&) = delete;
    TempFileGuard& operator=(const TempFileGuard&) = delete;
    ~TempFileGuard() { unregister_temp_file(slot_); }
    void release() { unregister_temp_file(slot_); slot_ = -1; }

private:
    int slot_;
};

}  // namespace ds3
