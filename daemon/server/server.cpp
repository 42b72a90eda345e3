// Accepting, framing, deadlines and limits for Varlink over a Unix socket.
#include "daemon/server/server.hpp"

#include "daemon/asio.hpp"
#include <boost/asio/write.hpp>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "daemon/log.hpp"
#include "daemon/server/systemd.hpp"
#include "protocol/errors.hpp"
#include "protocol/limits.hpp"
#include "protocol/secret.hpp"

namespace firmad {

namespace asio = boost::asio;
using local = asio::local::stream_protocol;
using Clock = std::chrono::steady_clock;

struct Server::Connection {
  Connection(local::socket s, Peer p)
      : socket(std::move(s)), peer(std::move(p)), timer(socket.get_executor()), turn_timer(socket.get_executor()) {}
  local::socket socket;
  Peer peer;
  asio::steady_timer timer;       // the watchdog's
  asio::steady_timer turn_timer;  // waits for a turn (FairShare::turn)
  std::string buffer;             // bytes read, not yet answered
  std::size_t searched = 0;       // of them, how many hold no NUL
  std::size_t charged = 0;        // of the buffer's capacity, bytes charged to the uid (FairShare)
  bool turn_fresh = false;        // a turn taken for a read may also answer the frame it completed
  // Reading and Writing wait on the peer: the deadline applies. Working waits
  // for the token: no deadline, and shutdown lets it finish.
  enum class Phase { Reading, Working, Writing } phase = Phase::Reading;
  Clock::time_point deadline = Clock::time_point::max();
  bool closed = false;
};

Server::Server(asio::io_context& io, const Config& config, Service& service, FairShare& share)
    : io_(io), config_(config), service_(service), share_(share) {}

namespace {

// Whether something already accepts connections on the path.
bool socket_in_use(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  const bool in_use = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return in_use;
}

bool is_listening_unix_stream(int fd) {
  int type = 0, listening = 0;
  sockaddr_storage addr{};
  socklen_t len = sizeof type, llen = sizeof listening, alen = sizeof addr;
  return ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM &&
         ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &llen) == 0 && listening &&
         ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &alen) == 0 && addr.ss_family == AF_UNIX;
}

[[noreturn]] void fail(const std::string& what, const std::string& path) {
  throw std::runtime_error(what + " " + path + ": " + std::strerror(errno));
}

}  // namespace

void Server::open() {
  if (const auto passed = systemd::listen_fds(); !passed.empty()) {
    for (int fd : passed) {
      if (!is_listening_unix_stream(fd))
        throw std::runtime_error("systemd passed fd " + std::to_string(fd) + ", which is not a listening Unix stream socket");
      acceptors_.push_back(std::make_unique<local::acceptor>(io_, local(), fd));
    }
    log::info("listening", {{"sockets", passed.size()}, {"from", "systemd"}});
    return;
  }
  const std::string& path = config_.daemon.socket;
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  // The directory is only a way to the socket: searchable by all (0755; the
  // mode is set after mkdir, past firmad's umask). The socket's own group and
  // mode decide who connects. An existing directory is the administrator's;
  // one that would keep the socket's group out gets a warning.
  if (::mkdir(dir.c_str(), 0755) == 0) {
    if (::chmod(dir.c_str(), 0755) != 0) fail("cannot set the mode of", dir);
  } else if (errno != EEXIST) {
    fail("cannot create socket directory", dir);
  } else if (struct stat d{}; ::stat(dir.c_str(), &d) == 0) {
    const bool group_passes = config_.daemon.socket_group && d.st_gid == *config_.daemon.socket_group && (d.st_mode & S_IXGRP);
    if (!(d.st_mode & S_IXOTH) && !group_passes) {
      char mode[8];
      std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(d.st_mode & 07777));
      log::warning("socket-directory-closed", {{"directory", dir.string()}, {"mode", mode},
                                                {"hint", "only its owner and group can reach the socket; make it 0755"}});
    }
  }
  struct stat st{};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) throw std::runtime_error(path + " exists and is not a socket; refusing to replace it");
    if (socket_in_use(path)) throw std::runtime_error("another daemon is already listening on " + path);
    ::unlink(path.c_str());  // stale socket of a previous run
  }
  auto acceptor = std::make_unique<local::acceptor>(io_);
  acceptor->open();
  // Bind under a restrictive umask so the socket is never reachable by
  // others between bind() and chmod().
  const mode_t old = ::umask(0177);
  boost::system::error_code ec;
  acceptor->bind(local::endpoint(path), ec);
  ::umask(old);
  if (ec) throw std::runtime_error("cannot bind " + path + ": " + ec.message());
  created_socket_ = true;
  if (config_.daemon.socket_group && ::chown(path.c_str(), -1, *config_.daemon.socket_group) != 0) {
    if (errno != EPERM) fail("cannot set the group of", path);
    throw std::runtime_error("cannot give " + path + " to daemon.socket_group (gid " +
                             std::to_string(*config_.daemon.socket_group) +
                             "): firmad's user must be a member of that group (or let systemd make the socket: firmad.socket)");
  }
  if (::chmod(path.c_str(), config_.daemon.socket_mode) != 0) fail("cannot set the mode of", path);
  acceptor->listen(asio::socket_base::max_listen_connections);
  acceptors_.push_back(std::move(acceptor));
  log::info("listening", {{"socket", path}});
}

void Server::start() {
  for (auto& a : acceptors_) asio::co_spawn(io_, listen(*a), asio::detached);
}

void Server::shutdown() {
  if (stopping_) return;
  stopping_ = true;
  for (auto& a : acceptors_) {
    boost::system::error_code ec;
    a->close(ec);
  }
  // Idle connections go now; one being answered finishes its reply (a
  // writer whose peer does not read is cut at its deadline by the watchdog).
  for (const auto& c : connections_) {
    if (c->phase == Connection::Phase::Reading) {
      boost::system::error_code ec;
      c->socket.close(ec);
    }
  }
  if (created_socket_) ::unlink(config_.daemon.socket.c_str());
  log::info("shutting-down", {{"connections", connections_.size()}});
}

void Server::forget(const std::shared_ptr<Connection>& c) {
  c->closed = true;
  c->timer.cancel();
  boost::system::error_code ec;
  c->socket.close(ec);
  if (connections_.erase(c) && --per_uid_[c->peer.uid] == 0) per_uid_.erase(c->peer.uid);
}

asio::awaitable<void> Server::listen(local::acceptor& acceptor) {
  while (!stopping_) {
    boost::system::error_code ec;
    local::socket socket = co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      if (ec == asio::error::operation_aborted || stopping_) co_return;
      // EMFILE and the like: say so, pause briefly, go on serving the others.
      log::error("accept-failed", {{"error", ec.message()}});
      asio::steady_timer pause(io_, std::chrono::milliseconds(100));
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    Peer peer;
    try {
      peer = peer_of(socket.native_handle());
    } catch (const std::exception& e) {
      log::warning("peer-unknown", {{"error", e.what()}});
      continue;
    }
    const auto of_uid = per_uid_.find(peer.uid);
    const std::size_t uid_connections = of_uid == per_uid_.end() ? 0 : of_uid->second;
    if (connections_.size() >= config_.daemon.max_connections ||
        uid_connections >= config_.daemon.max_connections_per_peer) {
      // Reconnecting at its own limit is a uid's doing; the daemon's limit
      // may have been filled by others.
      if (uid_connections >= config_.daemon.max_connections_per_peer) share_.offence(peer.uid);
      log::throttled(log::Level::Warning, "connection-refused", peer.uid,
                     {{"uid", peer.uid}, {"pid", peer.pid}, {"connections", connections_.size()}, {"of_uid", uid_connections}});
      continue;  // the socket closes as it goes out of scope
    }
    auto c = std::make_shared<Connection>(std::move(socket), std::move(peer));
    connections_.insert(c);
    ++per_uid_[c->peer.uid];
    asio::co_spawn(io_, serve(c), asio::detached);
    asio::co_spawn(io_, watchdog(c), asio::detached);
  }
}

asio::awaitable<void> Server::watchdog(std::shared_ptr<Connection> c) {
  while (!c->closed) {
    const auto now = Clock::now();
    const bool waiting_on_peer = c->phase != Connection::Phase::Working;
    if (waiting_on_peer && c->deadline <= now) {
      log::throttled(log::Level::Info, "connection-timeout", c->peer.uid,
                     {{"uid", c->peer.uid}, {"pid", c->peer.pid},
                      {"while", c->phase == Connection::Phase::Reading ? "reading" : "writing"}});
      boost::system::error_code ec;
      c->socket.close(ec);  // the reader sees it and ends the connection
      co_return;
    }
    c->timer.expires_at(waiting_on_peer ? c->deadline : now + config_.daemon.idle_timeout);
    boost::system::error_code ec;
    co_await c->timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

namespace {

// Frees a grown read buffer without leaving its old bytes (perhaps a PIN of
// a pipelined Login) in freed memory.
void compact(std::string& buffer) {
  std::string fresh(buffer);
  protocol::secure_zero(buffer.data(), buffer.capacity());
  buffer.swap(fresh);
}

// Grows the read buffer to `capacity`, wiping the old one: it may hold a pipelined PIN.
void grow(std::string& buffer, std::size_t capacity) {
  std::string bigger;
  bigger.reserve(capacity);
  bigger.assign(buffer);
  protocol::secure_zero(buffer.data(), buffer.capacity());
  buffer.swap(bigger);
}

constexpr std::size_t kFrameLimit = protocol::kMaxMessageBytes + 1;

// ShuttingDown errors for the complete calls still buffered at shutdown:
// every call the daemon received gets an answer.
std::string refuse_buffered(const std::string& buffer) {
  std::string out;
  for (std::size_t start = 0, nul; (nul = buffer.find('\0', start)) != std::string::npos; start = nul + 1) {
    try {
      if (!protocol::parse_call(std::string_view(buffer).substr(start, nul - start)).oneway)
        out += protocol::encode_error(protocol::error::kShuttingDown, protocol::Json::object());
    } catch (const protocol::VarlinkError&) {
      break;  // the peer broke the framing: nothing after it is a call
    }
  }
  return out;
}

}  // namespace

void Server::settle_charge(Connection& c) {
  const std::size_t now = FairShare::charge_for(c.buffer.capacity());
  if (now > c.charged) share_.force_bytes(c.peer.uid, now - c.charged);
  else share_.give_bytes(c.peer.uid, c.charged - now);
  c.charged = now;
}

bool Server::make_room(Connection& c, std::size_t needed, std::string& last_words) {
  // Doubling, as Asio's dynamic buffers do, but never past the frame limit
  // (nor one more copy for its last few bytes).
  std::size_t capacity = std::max(2 * c.buffer.capacity(), needed);
  if (capacity + capacity / 8 >= kFrameLimit) capacity = kFrameLimit;
  const std::size_t extra = FairShare::charge_for(capacity) - std::min(c.charged, FairShare::charge_for(capacity));
  if (const auto room = share_.take_bytes(c.peer.uid, extra); room != FairShare::Room::Taken) {
    const bool uid_full = room == FairShare::Room::UidFull;
    // A strike either way: the first 16 are free, so a client that sends one
    // large call while others fill the daemon pays nothing, and uids that
    // keep filling it are held back.
    share_.offence(c.peer.uid);
    log::throttled(log::Level::Warning, "buffers-full", c.peer.uid,
                   {{"uid", c.peer.uid}, {"pid", c.peer.pid}, {"scope", uid_full ? "uid" : "daemon"},
                    {"buffered", share_.buffered()}});
    last_words = protocol::encode_error(
        protocol::error::kBuffersFull,
        {{"scope", uid_full ? "uid" : "daemon"},
         {"limit", uid_full ? share_.buffered_per_uid_limit() : share_.buffered_limit()}});
    return false;
  }
  c.charged += extra;
  grow(c.buffer, capacity);
  settle_charge(c);
  return true;
}

// Only new bytes are searched, with memchr: a peer streaming junk costs the
// I/O thread little more than the copy. Every read takes a turn first.
asio::awaitable<std::size_t> Server::read_frame(Connection& c, std::string& last_words) {
  constexpr std::size_t kChunk = 64 * 1024;
  std::string& buffer = c.buffer;
  for (;;) {
    if (const void* nul = std::memchr(buffer.data() + c.searched, '\0', buffer.size() - c.searched)) {
      c.searched = 0;  // the bytes after this frame are searched again with the next
      co_return static_cast<std::size_t>(static_cast<const char*>(nul) - buffer.data()) + 1;
    }
    c.searched = buffer.size();
    if (c.searched >= kFrameLimit) {
      share_.offence(c.peer.uid);
      log::throttled(log::Level::Warning, "protocol-violation", c.peer.uid,
                     {{"uid", c.peer.uid}, {"pid", c.peer.pid}, {"why", "oversize"}});
      last_words = protocol::encode_error(
          protocol::error::kProtocolViolation,
          {{"reason", "message exceeds " + std::to_string(protocol::kMaxMessageBytes) + " bytes"}});
      co_return 0;
    }
    // What the buffer has room for, at least 512 bytes and at most 64 KiB,
    // so a small call keeps a small buffer; and not past the free 16 KiB in
    // one step, so a call under 16 KiB is never charged for buffer room.
    std::size_t want =
        std::min({kChunk, kFrameLimit - c.searched, std::max<std::size_t>(512, buffer.capacity() - c.searched)});
    if (c.searched < FairShare::kFreeBytes) want = std::min(want, FairShare::kFreeBytes - c.searched);
    if (buffer.capacity() < c.searched + want && !make_room(c, c.searched + want, last_words)) co_return 0;
    boost::system::error_code ec;
    co_await c.socket.async_wait(local::socket::wait_read, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return 0;  // closed by the watchdog or at shutdown
    co_await share_.turn(c.peer.uid, c.turn_timer);
    c.turn_fresh = true;
    buffer.resize(c.searched + want);
    const std::size_t got = c.socket.read_some(asio::buffer(buffer.data() + c.searched, want), ec);
    buffer.resize(c.searched + (ec ? 0 : got));
    if (ec == asio::error::would_block || ec == asio::error::try_again) continue;
    if (ec) co_return 0;  // EOF, reset, or closed while it waited for its turn
  }
}

asio::awaitable<void> Server::serve(std::shared_ptr<Connection> c) {
  using Phase = Connection::Phase;
  std::string& buffer = c->buffer;
  std::string last_words;  // a protocol violation or ShuttingDown errors: written, then the connection closes
  // A streamed call's intermediate replies, each under the write deadline.
  const Stream stream = [this, c](std::string frame) -> asio::awaitable<void> {
    c->phase = Connection::Phase::Writing;
    c->deadline = Clock::now() + config_.daemon.idle_timeout;
    co_await asio::async_write(c->socket, asio::buffer(frame), asio::use_awaitable);
    c->phase = Connection::Phase::Working;
  };
  try {
    c->socket.non_blocking(true);  // reads happen only in a turn, and never wait there
    while (!stopping_) {
      c->phase = Phase::Reading;
      c->deadline = Clock::now() + config_.daemon.idle_timeout;
      const std::size_t n = co_await read_frame(*c, last_words);
      if (n == 0) break;  // EOF, reset, timeout (closed by the watchdog) or oversize
      // A frame that was already buffered (pipelined) waits for a turn of its
      // own, as a call received: shutdown answers it rather than cut it.
      c->phase = Phase::Working;
      if (!c->turn_fresh) co_await share_.turn(c->peer.uid, c->turn_timer);
      c->turn_fresh = false;
      if (stopping_) break;
      c->phase = Phase::Working;
      protocol::Call call;
      try {
        call = protocol::parse_call(std::string_view(buffer.data(), n - 1));
      } catch (const protocol::VarlinkError& e) {
        share_.offence(c->peer.uid);
        log::throttled(log::Level::Warning, "protocol-violation", c->peer.uid, {{"uid", c->peer.uid}, {"pid", c->peer.pid}});
        last_words = protocol::encode_error(e.name(), e.parameters());
        break;
      }
      Service::Answer answer = co_await service_.handle(call, c->peer, stream);
      if (answer.refused) share_.offence(c->peer.uid);
      // The frame may have carried a PIN: wipe it and the parsed copy.
      if (auto it = call.parameters.find("pin"); it != call.parameters.end() && it->is_string())
        protocol::wipe(it->get_ref<std::string&>());
      protocol::secure_zero(buffer.data(), n);
      buffer.erase(0, n);
      if (buffer.capacity() > 64 * 1024 && buffer.size() < 4096) {
        compact(buffer);
        settle_charge(*c);
      }
      if (!answer.frame.empty()) {
        c->phase = Phase::Writing;
        c->deadline = Clock::now() + config_.daemon.idle_timeout;
        co_await asio::async_write(c->socket, asio::buffer(answer.frame), asio::use_awaitable);
      }
    }
    if (stopping_ && last_words.empty()) last_words = refuse_buffered(buffer);
  } catch (const std::exception& e) {
    log::debug("connection-error", {{"uid", c->peer.uid}, {"pid", c->peer.pid}, {"error", e.what()}});
  }
  protocol::secure_zero(buffer.data(), buffer.capacity());
  std::string().swap(buffer);
  settle_charge(*c);  // gives every charged byte back
  if (!last_words.empty() && c->socket.is_open()) {
    c->phase = Phase::Writing;
    c->deadline = Clock::now() + config_.daemon.idle_timeout;
    boost::system::error_code ec;
    co_await asio::async_write(c->socket, asio::buffer(last_words), asio::redirect_error(asio::use_awaitable, ec));
  }
  forget(c);
}

}  // namespace firmad
