// A string for secrets (PINs, passwords): zeroed on every release, never printed.
#pragma once
#include <string.h>  // explicit_bzero
#include <cstddef>
#include <string>
#include <string_view>
#include <sys/mman.h>

namespace firmad::protocol {

// Overwrites memory in a way the optimiser may not remove: glibc's explicit_bzero: a memset the compiler may not drop, at memset's
// speed (the daemon wipes whole 2 MiB read buffers: a byte loop cost ~1 ms each).
inline void secure_zero(void* p, std::size_t n) noexcept {
  if (p != nullptr && n != 0) ::explicit_bzero(p, n);
}

// Owns a secret. Copy is deleted so a secret exists in one place; move
// transfers it (buffers are swapped, so each stays locked) and wipes the source. The buffer is reserved up front so the
// secret is never reallocated (and left behind) while being built.
class Secret {
 public:
  static constexpr std::size_t kCapacity = 256;

  // The buffer is locked in memory (never swapped out) where the process
  // may lock memory; where it may not, the secret is still zeroed on release.
  Secret() {
    data_.reserve(kCapacity);
    ::mlock(data_.data(), data_.capacity());
  }
  explicit Secret(std::string_view v) : Secret() { assign(v); }
  Secret(const Secret&) = delete;  // one copy of a secret, not two
  Secret& operator=(const Secret&) = delete;
  Secret(Secret&& o) noexcept : Secret() { swap_from(o); }
  Secret& operator=(Secret&& o) noexcept {
    if (this != &o) {
      clear();
      swap_from(o);
    }
    return *this;
  }
  ~Secret() {
    clear();
    ::munlock(data_.data(), data_.capacity());
  }

  // Replaces the contents; input longer than kCapacity is truncated to it.
  void assign(std::string_view v) {
    clear();
    data_.append(v.substr(0, kCapacity));
  }
  void push_back(char c) {
    if (data_.size() < kCapacity) data_.push_back(c);
  }
  void pop_back() {
    if (!data_.empty()) {
      data_.back() = 0;
      data_.pop_back();
    }
  }
  void clear() noexcept {
    secure_zero(data_.data(), data_.capacity());
    data_.clear();
  }
  bool empty() const noexcept { return data_.empty(); }
  std::size_t size() const noexcept { return data_.size(); }
  std::string_view view() const noexcept { return data_; }

 private:
  void swap_from(Secret& o) noexcept {
    data_.swap(o.data_);
    o.clear();
  }
  std::string data_;
};

// Wipes a std::string that held a secret (e.g. a value taken out of parsed JSON).
inline void wipe(std::string& s) noexcept {
  secure_zero(s.data(), s.capacity());
  s.clear();
}

}  // namespace firmad::protocol
