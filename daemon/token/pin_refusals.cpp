// One try per wrong PIN, ever: the refusal kept in the state directory.
#include "daemon/token/pin_refusals.hpp"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <array>
#include <fstream>
#include <nlohmann/json.hpp>
#include <system_error>

#include "daemon/log.hpp"
#include "daemon/state.hpp"

namespace firmad {
namespace {

std::string hex(const unsigned char* p, std::size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (std::size_t i = 0; i < n; ++i) out += kDigits[p[i] >> 4], out += kDigits[p[i] & 15];
  return out;
}

}  // namespace

PinRefusals::PinRefusals(std::filesystem::path file) : file_(std::move(file)) {
  if (file_.empty()) return;
  std::ifstream in(file_);
  if (!in) return;  // none remembered
  try {
    const auto j = nlohmann::json::parse(in);
    Record r{j.at("salt").get<std::string>(), j.at("digest").get<std::string>(), j.at("source").get<std::string>(),
             j.at("at").get<std::time_t>()};
    if (r.salt.size() != 32 || r.digest.size() != 64) throw std::invalid_argument("salt or digest of the wrong size");
    record_ = std::move(r);
  } catch (const std::exception& e) {
    log::warning("pin-refusal-unreadable", {{"file", file_.string()}, {"error", e.what()}});
  }
}

std::string PinRefusals::digest_of(std::string_view salt_hex, std::string_view serial, const protocol::Secret& pin) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int len = 0;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const std::string_view p = pin.view();
  const bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) &&
                  EVP_DigestUpdate(ctx, salt_hex.data(), salt_hex.size()) &&
                  EVP_DigestUpdate(ctx, serial.data(), serial.size()) && EVP_DigestUpdate(ctx, "", 1) &&
                  EVP_DigestUpdate(ctx, p.data(), p.size()) && EVP_DigestFinal_ex(ctx, md.data(), &len);
  EVP_MD_CTX_free(ctx);
  if (!ok) throw std::runtime_error("SHA-256 failed");
  return hex(md.data(), len);
}

bool PinRefusals::refused(std::string_view serial, const protocol::Secret& pin) const {
  return record_ && digest_of(record_->salt, serial, pin) == record_->digest;
}

std::optional<std::time_t> PinRefusals::refused_at() const {
  return record_ ? std::optional<std::time_t>(record_->at) : std::nullopt;
}

std::string PinRefusals::refused_source() const { return record_ ? record_->source : std::string(); }

std::string PinRefusals::remember(std::string_view serial, std::string_view source, const protocol::Secret& pin) {
  unsigned char salt[16];
  if (RAND_bytes(salt, sizeof salt) != 1) throw std::runtime_error("no random bytes for a salt");
  Record r;
  r.salt = hex(salt, sizeof salt);
  r.digest = digest_of(r.salt, serial, pin);
  r.source = std::string(source);
  r.at = std::time(nullptr);
  record_ = r;
  if (file_.empty()) return {};
  const nlohmann::json j{{"salt", r.salt}, {"digest", r.digest}, {"source", r.source}, {"at", r.at}};
  try {
    replace_file(file_, j.dump() + "\n", 0600);
  } catch (const StateError& e) {
    return e.what();
  }
  return {};
}

std::string PinRefusals::forget() {
  record_.reset();
  if (file_.empty()) return {};
  std::error_code ec;
  std::filesystem::remove(file_, ec);
  return ec ? "cannot remove " + file_.string() + ": " + ec.message() : std::string();
}

}  // namespace firmad
