// firmad's persistent state: one JSON document in the state directory, replaced atomically.
#pragma once
#include <filesystem>
#include <mutex>
#include <optional>
#include <sys/types.h>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace firmad {

class StateError : public std::runtime_error {
 public:
  explicit StateError(const std::string& what, bool replaced = false) : std::runtime_error(what), replaced_(replaced) {}
  // The new content is in place (only its durability is in doubt).
  bool replaced() const noexcept { return replaced_; }

 private:
  bool replaced_;
};

// Replaces `file` with `data`: written to "<file>.tmp" with the given mode
// (and owner/group), fsynced, renamed over `file`, and the directory fsynced,
// so a crash leaves the old or the new content, never half. Throws StateError
// naming the path.
void replace_file(const std::filesystem::path& file, const std::string& data, mode_t mode,
                  std::optional<uid_t> owner = std::nullopt, std::optional<gid_t> group = std::nullopt);

// Holds the document in memory; every update writes it through to
// <directory>/state.json with write-to-temporary, fsync, rename, fsync of the
// directory, so a crash leaves either the old or the new document, never half.
// Thread-safe.
// Removes what a crash during replace_file(`file`) can leave: siblings named
// `.<file name>.firmad-XXXXXX` (mkstemp's six letters or digits), regular
// files only, never through a link. Returns how many it removed; never throws.
std::size_t remove_temporaries_of(const std::filesystem::path& file) noexcept;

class StateStore {
 public:
  // Creates the directory (0700) if missing and reads state.json if present.
  // Throws StateError naming the path if it cannot, or if the file is not a
  // JSON object (it is then left untouched for an administrator to inspect).
  explicit StateStore(std::filesystem::path directory);

  // Removes temporary files a crash left (of state.json and of the backups).
  // Call it once this process is the only firmad (after the socket is
  // taken): another one's write under way would lose its file.
  void remove_temporaries() noexcept;

  // Returns a copy of the document.
  nlohmann::json read() const;
  // Applies `change` to a copy and persists it; the in-memory document
  // changes only if the write succeeded. Throws StateError.
  template <typename Change>
  void update(Change&& change) {
    std::lock_guard lock(mutex_);
    nlohmann::json next = doc_;
    change(next);
    try {
      write(next);
    } catch (const StateError& e) {
      if (e.replaced()) doc_ = std::move(next);  // on disk already: the next write builds on it
      throw;
    }
    doc_ = std::move(next);
  }

  const std::filesystem::path& file() const noexcept { return file_; }
  const std::filesystem::path& directory() const noexcept { return directory_; }

 private:
  void write(const nlohmann::json& doc) const;
  std::filesystem::path directory_;
  std::filesystem::path file_;
  mutable std::mutex mutex_;
  nlohmann::json doc_;
};

}  // namespace firmad
