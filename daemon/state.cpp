// Atomic write-through of the state document.
#include "daemon/state.hpp"

#include <algorithm>
#include <cctype>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "daemon/log.hpp"

namespace firmad {
namespace {

[[noreturn]] void fail(const std::string& what, const std::filesystem::path& path) {
  throw StateError(what + " " + path.string() + ": " + std::strerror(errno));
}

void write_all(int fd, const std::string& data, const std::filesystem::path& path) {
  std::size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("cannot write", path);
    off += static_cast<std::size_t>(n);
  }
}

}  // namespace

std::size_t remove_temporaries_of(const std::filesystem::path& file) noexcept {
  namespace fs = std::filesystem;
  std::size_t removed = 0;
  try {
    const std::string prefix = "." + file.filename().string() + ".firmad-";
    std::error_code ec;
    for (fs::directory_iterator it(file.has_parent_path() ? file.parent_path() : fs::path("."), ec), end;
         !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (name.size() != prefix.size() + 6 || name.compare(0, prefix.size(), prefix) != 0) continue;
      if (!std::all_of(name.end() - 6, name.end(), [](unsigned char c) { return std::isalnum(c); })) continue;
      std::error_code type_ec;
      if (it->is_symlink(type_ec) || !it->is_regular_file(type_ec)) continue;
      if (fs::remove(it->path(), type_ec)) {
        ++removed;
        log::notice("temporary-file-removed", {{"path", it->path().string()}, {"why", "left by an interrupted write"}});
      }
    }
  } catch (...) {
    // Best effort: a leftover stays until the next start.
  }
  return removed;
}

void StateStore::remove_temporaries() noexcept {
  remove_temporaries_of(file_);
  try {
    // A backup's temporary file may be all there is of it: ".<alias>-<serial>.pem.firmad-XXXXXX".
    std::vector<std::filesystem::path> backups;
    std::error_code ec;
    for (std::filesystem::directory_iterator it(directory_ / "backup", ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      const auto at = name.rfind(".firmad-");
      if (name.size() > 1 && name[0] == '.' && at != std::string::npos && at > 1)
        backups.push_back(directory_ / "backup" / name.substr(1, at - 1));
    }
    for (const auto& pem : backups) remove_temporaries_of(pem);
  } catch (...) {
  }
}

StateStore::StateStore(std::filesystem::path directory)
    : directory_(std::move(directory)), file_(directory_ / "state.json"), doc_(nlohmann::json::object()) {
  if (::mkdir(directory_.c_str(), 0700) != 0 && errno != EEXIST) fail("cannot create state directory", directory_);
  std::ifstream in(file_, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) return;
    fail("cannot read", file_);
  }
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json doc = nlohmann::json::parse(text.str(), nullptr, false);
  if (doc.is_discarded() || !doc.is_object())
    throw StateError(file_.string() + " is not a JSON object; move it aside to start afresh");
  doc_ = std::move(doc);
}

nlohmann::json StateStore::read() const {
  std::lock_guard lock(mutex_);
  return doc_;
}

// Invalid UTF-8 that slipped into a string is replaced, never a reason to
// lose the document.
void StateStore::write(const nlohmann::json& doc) const {
  replace_file(file_, doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n", 0600);
}

void replace_file(const std::filesystem::path& file, const std::string& data, mode_t mode, std::optional<uid_t> owner,
                  std::optional<gid_t> group) {
  // A fresh name created exclusively: nothing planted beside the target
  // (a FIFO, a link) is opened, truncated or chowned.
  // Named ".<name>.firmad-XXXXXX": hidden, and never taken for a file of an
  // administrator's when leftovers are removed (remove_temporaries_of).
  const std::filesystem::path parent = file.has_parent_path() ? file.parent_path() : std::filesystem::path(".");
  std::string name = (parent / ("." + file.filename().string() + ".firmad-XXXXXX")).string();
  const int fd = ::mkostemp(name.data(), O_CLOEXEC);
  if (fd < 0) fail("cannot create a temporary file beside", file);
  const std::filesystem::path tmp = name;
  try {
    write_all(fd, data, tmp);
    // Owner and mode before the name appears: nobody sees the file with the wrong ones.
    if ((owner || group) && ::fchown(fd, owner ? *owner : uid_t(-1), group ? *group : gid_t(-1)) != 0)
      fail("cannot change the owner of", tmp);
    if (::fchmod(fd, mode) != 0) fail("cannot change the mode of", tmp);
    if (::fsync(fd) != 0) fail("cannot sync", tmp);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), file.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    errno = err;
    fail("cannot replace", file);
  }
  // The rename is durable only once the directory entry is.
  const std::filesystem::path directory = file.has_parent_path() ? file.parent_path() : std::filesystem::path(".");
  const int dir = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) fail("cannot open", directory);
  const int rc = ::fsync(dir);
  ::close(dir);
  if (rc != 0) throw StateError("cannot sync " + directory.string() + ": " + std::strerror(errno), /*replaced=*/true);
}

}  // namespace firmad
