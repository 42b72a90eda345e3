// libfirma: sign through firmad from any local program. Speaks protocol/ only.
#pragma once
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace firmad::protocol {
struct Reply;  // protocol/message.hpp: only firma.cpp needs it
}

namespace firma {

using Bytes = std::vector<std::uint8_t>;
using Json = nlohmann::json;

// The daemon could not be reached, or the connection broke.
class ConnectionError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The socket refused this process (EACCES/EPERM at connect): the message
// names the permission missing (the socket's or directory's mode and group).
class SocketAccessDenied : public ConnectionError {
 public:
  using ConnectionError::ConnectionError;
};

// The daemon answered with a Varlink error: name() is its full name
// ("io.firmad.Signer.KeyNotFound"), parameters() its details.
class Error : public std::runtime_error {
 public:
  Error(std::string name, Json parameters);
  const std::string& name() const noexcept { return name_; }
  const Json& parameters() const noexcept { return parameters_; }
  // The part after the last dot ("KeyNotFound").
  std::string short_name() const;

 private:
  std::string name_;
  Json parameters_;
};

// $FIRMAD_SOCKET if set, else /run/firmad/firmad.sock.
std::string default_socket();

// Returns the digest of data with "sha256", "sha384" or "sha512".
// Throws std::invalid_argument for other names.
Bytes digest(const std::string& hash, std::span<const std::uint8_t> data);

struct SignOptions {
  std::string hash = "sha256";
  bool pss = false;                     // RSA keys: RSA-PSS instead of PKCS#1 v1.5
  std::optional<int> salt_length;       // RSA-PSS salt; default the digest length
};

// One connection to firmad. Not thread-safe: use one Client per thread.
class Client {
 public:
  // Connects; throws ConnectionError naming the socket and the reason.
  explicit Client(const std::string& socket_path = default_socket());
  Client(const Client&) = delete;  // owns a socket
  Client& operator=(const Client&) = delete;
  Client(Client&& other) noexcept;
  Client& operator=(Client&& other) noexcept;
  ~Client();

  // Calls a method and returns the reply's parameters. Throws Error for an
  // error reply, ConnectionError if the connection fails.
  Json call(const std::string& method, const Json& parameters = Json::object());
  // Calls a method with "more": each intermediate reply's parameters go to
  // `each` as they arrive; returns the last reply's. Throws like call().
  Json call_more(const std::string& method, const Json& parameters, const std::function<void(const Json&)>& each);

  Json status();
  Json list_keys();  // the "keys" array
  // Signs a digest computed by the caller; returns the signature bytes (ECDSA: DER).
  Bytes sign_digest(const std::string& key, std::span<const std::uint8_t> digest, const SignOptions& options = {});
  // Hashes data locally with options.hash and signs the digest.
  Bytes sign_data(const std::string& key, std::span<const std::uint8_t> data, const SignOptions& options = {});
  // Ed25519 keys: signs the message itself (at most 1 MiB).
  Bytes sign_message(const std::string& key, std::span<const std::uint8_t> message);
  // CMS SignedData (DER) with the content attached (at most 1 MiB).
  Bytes sign_cms(const std::string& key, std::span<const std::uint8_t> content, const std::string& hash = "sha256");
  // Detached CMS SignedData (DER) over a digest of the content computed by the caller.
  Bytes sign_cms_detached(const std::string& key, std::span<const std::uint8_t> digest, const std::string& hash = "sha256");
  // Administrators: log the daemon in (pin: nullopt = its configured source) or out.
  std::string login(const std::string& token, const std::optional<std::string>& pin, bool force = false);
  // Logs firmad in to a token with a PIN pad: the holder types the PIN on
  // the reader while this call waits (see Token's pinPad in status()).
  std::string login_on_reader(const std::string& token, bool force = false);
  std::string logout(const std::string& token);

  // How long a call waits for each reply before it fails with ConnectionError
  // ("firmad did not answer"); zero (the default) waits as long as it takes.
  void set_reply_timeout(std::chrono::milliseconds timeout) { reply_timeout_ = timeout; }

 private:
  void send_all(const std::string& data);
  std::string receive_frame();
  // The next reply; throws Error for an error reply, ConnectionError for a malformed one.
  firmad::protocol::Reply receive_reply();
  int fd_ = -1;
  std::string buffer_;
  // How long a call polls for its reply before sleeping ($FIRMA_BUSY_POLL_US).
  std::chrono::microseconds busy_poll_{50};
  std::chrono::milliseconds reply_timeout_{0};
};

}  // namespace firma
