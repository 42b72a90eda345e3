// The daemon's life: configuration checks, sockets, systemd activation, queues, SIGTERM.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "daemon_fixture.hpp"
#include "protocol/base64.hpp"

namespace firmad::test {
namespace {

class Lifecycle : public ::testing::Test {
 protected:
  TokenRig rig;
  CommandResult check(const fs::path& cfg) {
    return run(quote(firmad_binary().string()) + " --check-config --config " + quote(cfg.string()));
  }
  static std::string sign_call() {
    return firma::Json{{"method", "io.firmad.Signer.Sign"},
                       {"parameters", {{"key", "empresa"}, {"digest", protocol::base64_encode(firma::Bytes(32, 3))}}}}
               .dump() +
           '\0';
  }
};

TEST_F(Lifecycle, CheckConfigAcceptsAValidFile) {
  auto r = check(rig.config());
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("valid (1 token(s), 4 key(s))"), std::string::npos) << r.out;
}

TEST_F(Lifecycle, CheckConfigExplainsErrors) {
  auto r = check(rig.write_config({{"sessions", "sesions = 2"}}));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.out.find("custom.toml: tokens.demo.sesions: unknown key (accepted: module, uri, sessions"), std::string::npos) << r.out;
  r = check(rig.write_config({{"pin_source", "pin_source = \"usb\""}}));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.out.find("tokens.demo.pin_source: accepted: \"file\", \"credential\", \"admin\""), std::string::npos) << r.out;
  r = check(rig.write_config({}, "[keys.x]\ntoken = \"demo\"\nuri = \"pkcs11:id=%zz\"\n"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.out.find("not a valid PKCS#11 URI"), std::string::npos) << r.out;
  r = check(rig.dir() / "missing.toml");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.out.find("missing.toml"), std::string::npos) << r.out;
}

TEST_F(Lifecycle, CreatesSocketDirectoryAndSocketWithTheirModes) {
  const fs::path sock = rig.dir() / "newdir" / "firmad.sock";
  // Under the unit's UMask=0077 too, the directory is searchable by all: the
  // socket's own mode and group decide who connects.
  const mode_t umask = ::umask(0077);
  Daemon d(rig.write_config({{"socket", "socket = \"" + sock.string() + "\""}}), sock);
  ::umask(umask);
  struct stat st{};
  ASSERT_EQ(::stat(sock.parent_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  ASSERT_EQ(::stat(sock.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  // A second daemon on the same socket refuses instead of stealing it.
  Daemon::Options o;
  o.wait_for_socket = false;
  Daemon second(rig.write_config({{"socket", "socket = \"" + sock.string() + "\""}}, "", "second.toml"), sock, o);
  EXPECT_TRUE(eventually([&] { return !second.running(); }));
  EXPECT_NE(second.log().find("already listening"), std::string::npos) << second.log();
  EXPECT_EQ(d.terminate(), 0);
  EXPECT_FALSE(fs::exists(sock)) << "the socket is removed on exit";
}

TEST_F(Lifecycle, ServesOnSocketPassedBySystemd) {
  const fs::path sock = rig.dir() / "activated.sock";
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, sock.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(fd, 16), 0);
  Daemon::Options o;
  o.listen_fd = fd;
  o.wait_for_socket = false;
  Daemon d(rig.config(), sock, o);
  ::close(fd);
  ASSERT_TRUE(d.wait_for_log("from=systemd")) << d.log();
  ASSERT_TRUE(d.wait_for_log("event=token-login ")) << d.log();
  firma::Client c(sock.string());
  EXPECT_TRUE(c.status()["tokens"][0]["loggedIn"].get<bool>());
  EXPECT_FALSE(fs::exists(rig.socket())) << "the configured socket is not created under socket activation";
}

TEST_F(Lifecycle, NotifiesSystemdWhenReadyAndWhenStopping) {
  const fs::path path = rig.dir() / "notify.sock";
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ::setenv("NOTIFY_SOCKET", path.c_str(), 1);
  ::setenv("WATCHDOG_USEC", "200000", 1);
  Daemon d(rig.config(), rig.socket());
  ::unsetenv("NOTIFY_SOCKET");
  ::unsetenv("WATCHDOG_USEC");
  auto receive = [&] {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 10000) != 1) return std::string();
    char buf[512];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
  };
  // The first watchdog ping comes as the loop starts, READY right after.
  std::string first = receive(), second = receive();
  if (first == "WATCHDOG=1") std::swap(first, second);
  EXPECT_EQ(first, "READY=1\nSTATUS=serving");
  EXPECT_EQ(second, "WATCHDOG=1");
  EXPECT_EQ(receive(), "WATCHDOG=1") << "pinged again within WATCHDOG_USEC";
  // READY comes after the token was scanned and logged in.
  EXPECT_TRUE(firma::Client(rig.socket().string()).status()["tokens"][0]["loggedIn"].get<bool>());
  ASSERT_EQ(::kill(d.pid(), SIGTERM), 0);
  std::string stopping;
  while ((stopping = receive()) == "WATCHDOG=1") {
  }
  EXPECT_EQ(stopping, "STOPPING=1");
  EXPECT_EQ(d.wait_exit(), 0);
  ::close(fd);
}

TEST_F(Lifecycle, PeerThatStopsReadingCannotHoldUpShutdown) {
  Daemon d(rig.write_config({{"log_level", "log_level = \"info\"\nidle_timeout_ms = 500"}}), rig.socket());
  ASSERT_TRUE(d.wait_for_log("event=started")) << d.log();
  RawConnection raw(rig.socket());
  // Replies (the interface text, kilobytes each) that fill the socket: never read.
  std::string calls;
  for (int i = 0; i < 400; ++i)
    calls += std::string(R"({"method":"org.varlink.service.GetInterfaceDescription","parameters":{"interface":"io.firmad.Signer"}})") + '\0';
  ASSERT_TRUE(raw.send(calls));
  // Wait until the unread replies pile up and stop growing: the daemon is
  // then blocked writing. (A slow daemon, as under ThreadSanitizer, may still
  // be between two requests, reading, when the first 100 kB have arrived.)
  int last = -1;
  auto changed = std::chrono::steady_clock::now();
  ASSERT_TRUE(eventually([&] {
    int queued = 0;
    if (::ioctl(raw.fd(), FIONREAD, &queued) != 0) return false;
    if (queued != last) last = queued, changed = std::chrono::steady_clock::now();
    return queued >= 100000 && std::chrono::steady_clock::now() - changed >= std::chrono::milliseconds(200);
  }));
  ASSERT_EQ(::kill(d.pid(), SIGTERM), 0);
  EXPECT_EQ(d.wait_exit(std::chrono::seconds(5)), 0) << "a writer stuck on its peer is cut at its deadline\n" << d.log();
  EXPECT_NE(d.log().find("event=connection-timeout level=info uid=0"), std::string::npos) << d.log();
  EXPECT_NE(d.log().find("while=writing"), std::string::npos) << d.log();
}

TEST_F(Lifecycle, QueueIsBoundedAndStatusAnswersWhileItIsFull) {
  Daemon d(rig.write_config({{"sessions", "sessions = 1\nqueue_limit = 2"}}), rig.socket());
  ASSERT_TRUE(d.wait_for_log("event=token-login ")) << d.log();
  std::atomic<int> ok{0}, full{0}, other{0};
  std::atomic<bool> flooding{true};
  std::vector<std::thread> threads;
  for (int t = 0; t < 12; ++t) {
    threads.emplace_back([&] {
      firma::Client c(rig.socket().string());
      for (int i = 0; i < 25; ++i) {
        try {
          c.sign_digest("empresa", firma::Bytes(32, 9));
          ++ok;
        } catch (const firma::Error& e) {
          (e.short_name() == "QueueFull" ? full : other)++;
        }
      }
    });
  }
  int status_answers = 0;
  long max_queued = 0;
  std::thread observer([&] {
    firma::Client c(rig.socket().string());
    while (flooding) {
      auto t = c.status()["tokens"][0];
      EXPECT_EQ(t["queueLimit"], 2);
      max_queued = std::max<long>(max_queued, t["queued"].get<long>());
      ++status_answers;
    }
  });
  for (auto& t : threads) t.join();
  flooding = false;
  observer.join();
  EXPECT_GT(ok, 0);
  EXPECT_GT(full, 0) << "12 clients on a queue of 2 must overflow it";
  EXPECT_EQ(other, 0);
  EXPECT_GT(status_answers, 0);
  EXPECT_LE(max_queued, 2);
}

TEST_F(Lifecycle, SigtermFinishesInFlightRequestsLogsOutAndExitsZero) {
  Daemon d(rig.write_config({{"sessions", "sessions = 1"}, {"log_level", "log_level = \"info\"\nmax_connections_per_peer = 64"}}),
           rig.socket());
  ASSERT_TRUE(d.wait_for_log("event=token-login ")) << d.log();
  std::vector<std::unique_ptr<RawConnection>> conns;
  for (int i = 0; i < 48; ++i) {
    conns.push_back(std::make_unique<RawConnection>(rig.socket()));
    ASSERT_TRUE(conns.back()->send(sign_call()));
  }
  // Requests the daemon has read and queued are in flight; it must answer
  // every one of them after SIGTERM. Connections it had not accepted yet may
  // be closed unanswered: their requests never started.
  firma::Client observer(rig.socket().string());
  const long queued = observer.status()["tokens"][0]["queued"].get<long>();
  ASSERT_EQ(::kill(d.pid(), SIGTERM), 0);
  long answered = 0;
  for (auto& c : conns) {
    if (auto reply = c->read_frame()) {
      EXPECT_NE(reply->find("\"signature\""), std::string::npos) << *reply;
      ++answered;
    } else {
      EXPECT_TRUE(c->closed_by_peer(std::chrono::milliseconds(100))) << "no reply means a clean close";
    }
  }
  EXPECT_GE(answered, queued) << "every request queued at SIGTERM was answered";
  EXPECT_GT(answered, 0);
  EXPECT_EQ(d.wait_exit(), 0) << d.log();
  const std::string log = d.log();
  EXPECT_NE(log.find("event=token-logout level=info token=demo why=shutdown"), std::string::npos) << log;
  EXPECT_NE(log.find("event=stopped"), std::string::npos) << log;
}

}  // namespace
}  // namespace firmad::test
