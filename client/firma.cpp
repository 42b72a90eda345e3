// libfirma's C++ client: blocking Varlink calls over the Unix socket.
#include "client/firma.hpp"

#include <openssl/evp.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "protocol/base64.hpp"
#include "protocol/errors.hpp"
#include "protocol/limits.hpp"
#include "protocol/message.hpp"
#include "protocol/secret.hpp"

namespace firma {

Error::Error(std::string name, Json parameters)
    : std::runtime_error(name + (parameters.empty() ? "" : " " + parameters.dump())),
      name_(std::move(name)),
      parameters_(std::move(parameters)) {}

std::string Error::short_name() const {
  const auto dot = name_.rfind('.');
  return dot == std::string::npos ? name_ : name_.substr(dot + 1);
}

std::string default_socket() {
  const char* env = std::getenv("FIRMAD_SOCKET");
  return env && *env ? env : "/run/firmad/firmad.sock";
}

Bytes digest(const std::string& hash, std::span<const std::uint8_t> data) {
  const EVP_MD* md = hash == "sha256"   ? EVP_sha256()
                      : hash == "sha384" ? EVP_sha384()
                      : hash == "sha512" ? EVP_sha512()
                      : hash == "sha1"   ? EVP_sha1()
                                         : nullptr;
  if (!md) throw std::invalid_argument("unknown hash '" + hash + "' (accepted: sha256, sha384, sha512, sha1)");
  Bytes out(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  if (!EVP_Digest(data.data(), data.size(), out.data(), &len, md, nullptr)) throw std::runtime_error("digest failed");
  out.resize(len);
  return out;
}

namespace {

// Where to look when firmad stops answering: under socket activation a
// firmad that fails to start (a missing PIN credential, a bad configuration)
// shows only as a connection closed or never answered.
constexpr const char* kStoppedHint = " (did firmad fail to start, or stop? under systemd: systemctl status firmad; journalctl -u firmad)";

std::string octal_mode(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof text, "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

std::string group_name(gid_t gid) {
  const group* g = ::getgrgid(gid);
  return g ? g->gr_name : std::to_string(gid);
}

std::string user_name(uid_t uid) {
  const passwd* p = ::getpwuid(uid);
  return p ? p->pw_name : std::to_string(uid);
}

// Which permission connecting to `path` lacks: the first directory on the way
// this process may not search, else the socket's write permission, named
// with its mode, owner and group.
std::string why_denied(const std::string& path) {
  const std::string me = "uid " + std::to_string(::getuid()) + " (" + user_name(::getuid()) + ")";
  for (std::size_t slash = path.find('/', 1); slash != std::string::npos; slash = path.find('/', slash + 1)) {
    const std::string dir = path.substr(0, slash);
    struct stat st{};
    if (::access(dir.c_str(), X_OK) != 0 && ::stat(dir.c_str(), &st) == 0)
      return "the directory " + dir + " (mode " + octal_mode(st.st_mode) + ", " + user_name(st.st_uid) + ":" +
             group_name(st.st_gid) + ") may not be searched by " + me + "; it should be 0755";
  }
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) return "cannot inspect the socket";
  const std::string socket = "the socket (mode " + octal_mode(st.st_mode) + ", " + user_name(st.st_uid) + ":" +
                             group_name(st.st_gid) + ")";
  std::vector<gid_t> groups(static_cast<std::size_t>(std::max(::getgroups(0, nullptr), 0)));
  groups.resize(static_cast<std::size_t>(std::max(::getgroups(static_cast<int>(groups.size()), groups.data()), 0)));
  const bool in_group = ::getegid() == st.st_gid || std::find(groups.begin(), groups.end(), st.st_gid) != groups.end();
  if (!(st.st_mode & S_IWGRP)) return socket + " is closed to its group too; " + me + " may not connect";
  if (in_group) return socket + " should admit " + me + ", a member of its group: a security module (AppArmor, SELinux) may deny it";
  return socket + " may be used by members of group " + group_name(st.st_gid) + ", and " + me +
         " is not one in this session (after being added to a group, log in again or use newgrp)";
}

}  // namespace

Client::Client(const std::string& path) {
  if (const char* poll = std::getenv("FIRMA_BUSY_POLL_US")) busy_poll_ = std::chrono::microseconds(std::strtol(poll, nullptr, 10));
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path) throw ConnectionError("socket path too long: " + path);
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw ConnectionError(std::string("cannot create a socket: ") + std::strerror(errno));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    std::string message = "cannot connect to firmad at " + path + ": " + std::strerror(err);
    if (err == EACCES || err == EPERM) throw SocketAccessDenied(message + ": " + why_denied(path));
    throw ConnectionError(message + (err == ENOENT || err == ECONNREFUSED ? " (is firmad running?)" : ""));
  }
}

Client::Client(Client&& o) noexcept
    : fd_(o.fd_), buffer_(std::move(o.buffer_)), busy_poll_(o.busy_poll_), reply_timeout_(o.reply_timeout_) {
  o.fd_ = -1;
}

Client& Client::operator=(Client&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    buffer_ = std::move(o.buffer_);
    busy_poll_ = o.busy_poll_;
    reply_timeout_ = o.reply_timeout_;
    o.fd_ = -1;
  }
  return *this;
}

Client::~Client() {
  if (fd_ >= 0) ::close(fd_);
}

void Client::send_all(const std::string& data) {
  std::size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw ConnectionError(std::string("lost the connection to firmad: ") + std::strerror(errno) + kStoppedHint);
    off += static_cast<std::size_t>(n);
  }
}

std::string Client::receive_frame() {
  for (;;) {
    if (auto nul = buffer_.find('\0'); nul != std::string::npos) {
      std::string frame = buffer_.substr(0, nul);
      buffer_.erase(0, nul + 1);
      return frame;
    }
    if (buffer_.size() > firmad::protocol::kMaxMessageBytes) throw ConnectionError("firmad sent an oversize reply");
    char chunk[16384];
    ssize_t n = ::recv(fd_, chunk, sizeof chunk, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // Poll briefly before sleeping: the reply to a fast signature often
      // arrives within microseconds, and a wakeup costs more than that.
      const auto end = std::chrono::steady_clock::now() + busy_poll_;
      while (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && std::chrono::steady_clock::now() < end) {
        ::sched_yield();
        n = ::recv(fd_, chunk, sizeof chunk, MSG_DONTWAIT);
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (reply_timeout_.count() > 0) {
          pollfd p{fd_, POLLIN, 0};
          int ready;
          const auto limit = std::min<std::chrono::milliseconds::rep>(reply_timeout_.count(), std::numeric_limits<int>::max());
          do ready = ::poll(&p, 1, static_cast<int>(limit));
          while (ready < 0 && errno == EINTR);
          if (ready == 0)
            throw ConnectionError("firmad did not answer within " + std::to_string(reply_timeout_.count()) + " ms" +
                                  kStoppedHint);
        }
        n = ::recv(fd_, chunk, sizeof chunk, 0);
      }
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw ConnectionError(std::string("lost the connection to firmad: ") + std::strerror(errno) + kStoppedHint);
    if (n == 0) throw ConnectionError(std::string("firmad closed the connection") + kStoppedHint);
    buffer_.append(chunk, static_cast<std::size_t>(n));
  }
}

Json Client::call(const std::string& method, const Json& parameters) {
  if (fd_ < 0) throw ConnectionError("not connected");
  firmad::protocol::Call request{method, parameters, false, false};
  std::string frame = firmad::protocol::encode_call(request);
  if (auto it = request.parameters.find("pin"); it != request.parameters.end() && it->is_string())
    firmad::protocol::wipe(it->get_ref<std::string&>());
  send_all(frame);
  firmad::protocol::secure_zero(frame.data(), frame.size());  // it may carry a PIN
  return receive_reply().parameters;
}

firmad::protocol::Reply Client::receive_reply() {
  firmad::protocol::Reply reply;
  try {
    reply = firmad::protocol::parse_reply(receive_frame());
  } catch (const firmad::protocol::VarlinkError& e) {
    throw ConnectionError(std::string("firmad sent a malformed reply: ") + e.what());
  }
  if (reply.error) throw Error(*reply.error, std::move(reply.parameters));
  return reply;
}

Json Client::call_more(const std::string& method, const Json& parameters, const std::function<void(const Json&)>& each) {
  if (fd_ < 0) throw ConnectionError("not connected");
  send_all(firmad::protocol::encode_call({method, parameters, true, false}));
  for (;;) {
    firmad::protocol::Reply reply = receive_reply();
    if (!reply.continues) return std::move(reply.parameters);
    each(reply.parameters);
  }
}

Json Client::status() { return call("io.firmad.Signer.Status"); }

Json Client::list_keys() { return call("io.firmad.Signer.ListKeys").at("keys"); }

namespace {

Bytes decode_field(const Json& reply, const char* field) {
  auto it = reply.find(field);
  if (it == reply.end() || !it->is_string()) throw ConnectionError(std::string("firmad's reply lacks '") + field + "'");
  auto bytes = firmad::protocol::base64_decode(it->get_ref<const std::string&>());
  if (!bytes) throw ConnectionError(std::string("firmad's reply has invalid base64 in '") + field + "'");
  return std::move(*bytes);
}

}  // namespace

Bytes Client::sign_digest(const std::string& key, std::span<const std::uint8_t> d, const SignOptions& o) {
  Json params = {{"key", key}, {"digest", firmad::protocol::base64_encode(d)}, {"hash", o.hash}};
  if (o.pss) params["padding"] = "pss";
  if (o.salt_length) params["saltLength"] = *o.salt_length;
  return decode_field(call("io.firmad.Signer.Sign", params), "signature");
}

Bytes Client::sign_data(const std::string& key, std::span<const std::uint8_t> data, const SignOptions& o) {
  const Bytes d = digest(o.hash, data);
  return sign_digest(key, d, o);
}

Bytes Client::sign_message(const std::string& key, std::span<const std::uint8_t> message) {
  return decode_field(
      call("io.firmad.Signer.Sign", {{"key", key}, {"data", firmad::protocol::base64_encode(message)}}), "signature");
}

Bytes Client::sign_cms(const std::string& key, std::span<const std::uint8_t> content, const std::string& hash) {
  return decode_field(call("io.firmad.Signer.SignCms",
                           {{"key", key}, {"content", firmad::protocol::base64_encode(content)}, {"hash", hash}}),
                      "cms");
}

Bytes Client::sign_cms_detached(const std::string& key, std::span<const std::uint8_t> d, const std::string& hash) {
  return decode_field(
      call("io.firmad.Signer.SignCms", {{"key", key}, {"digest", firmad::protocol::base64_encode(d)}, {"hash", hash}}),
      "cms");
}

std::string Client::login(const std::string& token, const std::optional<std::string>& pin, bool force) {
  Json params = {{"token", token}};
  if (pin) params["pin"] = *pin;
  if (force) params["force"] = true;
  struct Wipe {
    Json& params;
    ~Wipe() {
      if (auto it = params.find("pin"); it != params.end()) firmad::protocol::wipe(it->get_ref<std::string&>());
    }
  } wipe{params};  // on every path, errors included
  return call("io.firmad.Signer.Login", params).value("loginState", "");
}

std::string Client::login_on_reader(const std::string& token, bool force) {
  Json params = {{"token", token}, {"pinPad", true}};
  if (force) params["force"] = true;
  return call("io.firmad.Signer.Login", params).value("loginState", "");
}

std::string Client::logout(const std::string& token) {
  return call("io.firmad.Signer.Logout", {{"token", token}}).value("loginState", "");
}

}  // namespace firma
