// Running an external program (a CA helper, a post-install command) with a time and an output limit.
#pragma once
#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

namespace firmad {

struct ProgramResult {
  int exit_code = -1;        // the program's exit status; -1 if it did not exit on its own
  int signal = 0;            // the signal that ended it, if one did
  bool timed_out = false;    // killed at the time limit
  bool output_too_large = false;  // killed when its output passed the limit
  std::string output;        // what it wrote on stdout (at most the limit)
  std::string errors;        // the start of what it wrote on stderr (for the log)

  bool exited_normally() const { return exit_code >= 0 && !timed_out && !output_too_large; }
  // "exit status 3", "killed after 60000 ms", "output exceeds 1048576 bytes", "signal 9".
  std::string describe(std::chrono::milliseconds limit, std::size_t max_output) const;
};

// Runs argv[0] (an absolute path; no shell, no PATH search) with `env` as its
// whole environment ("NAME=value"), stdin from /dev/null, in a process group
// of its own. Kills the group at `limit` or when stdout passes `max_output`
// bytes. Blocks the calling thread (never call it on the I/O thread).
// Throws std::runtime_error when the program cannot be started.
ProgramResult run_program(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                          std::chrono::milliseconds limit, std::size_t max_output);

}  // namespace firmad
