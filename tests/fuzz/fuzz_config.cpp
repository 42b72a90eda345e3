// libFuzzer target: any bytes as firmad.toml load or fail with a ConfigError.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "daemon/config.hpp"

namespace {

// One file, created on the first input and rewritten for each one, so the
// fuzzer does not spend its time creating and deleting files. It lives in
// $TMPDIR (run.sh points that at a directory it removes afterwards).
class ScratchFile {
 public:
  ScratchFile() {
    const char* dir = std::getenv("TMPDIR");
    path_ = std::string(dir && *dir ? dir : "/tmp") + "/firmad-fuzz-config-XXXXXX";
    const int fd = mkstemp(path_.data());
    if (fd < 0) {
      std::perror("mkstemp");
      std::abort();
    }
    ::close(fd);
  }
  ~ScratchFile() { ::unlink(path_.c_str()); }
  ScratchFile(const ScratchFile&) = delete;  // one owner of the path
  ScratchFile& operator=(const ScratchFile&) = delete;

  const std::string& write(const std::uint8_t* data, std::size_t size) {
    std::FILE* f = std::fopen(path_.c_str(), "wb");
    if (!f || (size > 0 && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) {
      std::perror(path_.c_str());
      std::abort();
    }
    return path_;
  }

 private:
  std::string path_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static ScratchFile file;
  const std::string& path = file.write(data, size);
  try {
    const firmad::Config cfg = firmad::load_config(path);
    // An accepted file always names at least one token, and every key's token exists.
    if (cfg.tokens.empty()) std::abort();
    for (const auto& k : cfg.keys)
      if (!cfg.token(k.token)) std::abort();
  } catch (const firmad::ConfigError& e) {
    // The documented shape: the message starts with the file name.
    if (std::string_view(e.what()).substr(0, path.size()) != path) std::abort();
  }
  return 0;
}
