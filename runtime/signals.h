// Ctrl-C safety for commands that write files: a process-wide registry of temporary
// files, and a SIGINT/SIGTERM handler that unlinks them and exits. The GGUF Writer
// registers its temporary file itself; a command that writes (convert, quantize) only
// calls install_interrupt_handler() once at start.
//
// The handler is async-signal-safe: paths live in a fixed table of slots (no allocation
// in the handler), removed with unlink(), then _exit(128 + signal) (130 for SIGINT).
//
// Interactive commands (chat) want Ctrl-C to stop the current answer, not the program:
// install_soft_interrupt() makes SIGINT only count (SIGTERM keeps the cleanup-and-exit
// behaviour), and the command polls interrupt_count() between tokens. As an escape from
// a long computation that never polls, a third SIGINT that nobody has taken yet falls
// back to the cleanup-and-exit handler.
#pragma once

#include <string>

namespace ds3 {

// Installs the SIGINT/SIGTERM handler. Idempotent; safe to call from any command.
void install_interrupt_handler();

// Switches SIGINT to counting (see above); installs the SIGTERM handler too. Idempotent.
// Installed without SA_RESTART, so a blocking read() returns EINTR on Ctrl-C.
void install_soft_interrupt();
// SIGINTs received since the last take_interrupts() (0 when soft mode is off).
int interrupt_count();
// Returns interrupt_count() and resets it to 0.
int take_interrupts();

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
