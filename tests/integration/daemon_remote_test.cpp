// A real remote token: 'p11-kit server' exports the SoftHSM token over a Unix
// socket and firmad reaches it through p11-kit-client.so, the standard way
// to a token in another process or container. A server that dies and comes
// back, or starts after firmad, is served without a restart (issue 10).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "daemon_fixture.hpp"

namespace firmad::test {
namespace {

constexpr const char* kClientModule = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";

class RemoteToken : public ::testing::Test {
 protected:
  TokenRig rig;
  fs::path server_socket = rig.dir() / "p11-kit" / "server.sock";
  pid_t server = -1;

  void SetUp() override {
    ASSERT_TRUE(fs::exists(kClientModule)) << "p11-kit-modules is not installed";
    fs::create_directories(server_socket.parent_path());
    ::setenv("P11_KIT_SERVER_ADDRESS", ("unix:path=" + server_socket.string()).c_str(), 1);
  }
  void TearDown() override {
    stop_server();
    ::unsetenv("P11_KIT_SERVER_ADDRESS");
  }

  // Starts 'p11-kit server' exporting the rig's token (or the SoftHSM store
  // `softhsm_conf` names), in a process group of its own (it forks a
  // p11-kit-remote per connection), and waits for its socket.
  void start_server(const fs::path& softhsm_conf = {}) {
    server = ::fork();
    if (server == 0) {
      ::setsid();
      if (!softhsm_conf.empty()) ::setenv("SOFTHSM2_CONF", softhsm_conf.c_str(), 1);
      if (!std::freopen("/dev/null", "w", stdout)) ::_exit(126);
      ::execlp("p11-kit", "p11-kit", "server", "--foreground", "--provider", "/usr/lib/softhsm/libsofthsm2.so", "--name",
               server_socket.c_str(), "pkcs11:token=firmad-demo", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ASSERT_GT(server, 0);
    ASSERT_TRUE(eventually([&] { return fs::exists(server_socket); })) << "p11-kit server did not start";
  }
  // Kills the server and its p11-kit-remote children, as a crash would, and
  // removes its socket file (a new server cannot start over it).
  void stop_server() {
    if (server <= 0) return;
    ::kill(-server, SIGKILL);
    ::waitpid(server, nullptr, 0);
    server = -1;
    fs::remove(server_socket);
  }
  std::unique_ptr<Daemon> start_firmad() {
    const auto cfg = rig.write_config({{"module", std::string("module = \"") + kClientModule + "\""},
                                       {"pin_source", "pin_source = \"file\""},
                                       {"sessions", "sessions = 2\nrefresh_interval_ms = 200"}});
    return std::make_unique<Daemon>(cfg, rig.socket());
  }
  // Every call here has a deadline: a call that hangs fails with its name
  // and the daemon's log, not as the test's time limit.
  static constexpr std::chrono::seconds kReplyTimeout{15};
  firma::Client client() {
    firma::Client c(rig.socket().string());
    c.set_reply_timeout(kReplyTimeout);
    return c;
  }
  firma::Json token_status() { return client().status()["tokens"][0]; }
  bool verifies(const std::string& text, const firma::Bytes& signature) {
    const fs::path data = rig.dir() / "v.txt", sig = rig.dir() / "v.sig";
    write_file(data, text);
    write_file(sig, std::string(signature.begin(), signature.end()));
    return run("openssl dgst -sha256 -verify " + quote(rig.public_key_pem("02").string()) + " -signature " +
               quote(sig.string()) + " " + quote(data.string()))
               .exit_code == 0;
  }
  void signs_and_verifies(const std::string& text) {
    const firma::Bytes data(text.begin(), text.end());
    EXPECT_TRUE(verifies(text, client().sign_data("firma-ec", data))) << text;
  }
  static double ms_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
  }
};

TEST_F(RemoteToken, ServerKilledAndRestartedIsServedAgainWithoutARestartOfFirmad) {
  start_server();
  auto d = start_firmad();
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  signs_and_verifies("before");

  stop_server();
  // Signatures fail, and fast: named errors, never a hang.
  const auto t0 = std::chrono::steady_clock::now();
  std::string first;
  try {
    client().sign_data("firma-ec", firma::Bytes{1, 2, 3});
  } catch (const firma::Error& e) {
    first = e.name();
  }
  const double fail_ms = ms_since(t0);
  EXPECT_TRUE(first == "io.firmad.Signer.TokenError" || first == "io.firmad.Signer.TokenAbsent") << first;
  ASSERT_TRUE(eventually([&] { return !token_status()["present"].get<bool>(); })) << d->log();
  EXPECT_EQ(token_status()["loginState"], "absent");

  // Back on the same address: found, checked, logged in again, served.
  const auto t1 = std::chrono::steady_clock::now();
  start_server();
  ASSERT_TRUE(eventually([&] { return token_status()["loggedIn"].get<bool>(); }, std::chrono::seconds(20))) << d->log();
  const double recovery_ms = ms_since(t1);
  signs_and_verifies("after");
  EXPECT_EQ(token_status()["loginAttempts"], 2) << "one C_Login at start, one after the server came back";
  EXPECT_EQ(d->log().find("event=token-replaced"), std::string::npos) << d->log();
  std::printf("[ figures  ] first failure after the kill %.1f ms; served again %.0f ms after the server restarted "
              "(refresh interval 200 ms); C_Login calls: %d\n",
              fail_ms, recovery_ms, token_status()["loginAttempts"].get<int>());
}

// The server dies while four clients sign: no crash, every failure named
// and answered at once, status says the token is gone; back, it serves.
TEST_F(RemoteToken, ServerKilledWhileFourClientsSignFailsThemNamedAndServesWhenBack) {
  start_server();
  auto d = start_firmad();
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  std::atomic<bool> stop{false};
  std::atomic<int> signed_ok{0}, failed{0};
  std::mutex m;
  std::map<std::string, int> errors;
  double slowest_failure_ms = 0;
  std::vector<std::thread> signers;
  auto join_signers = [&] {
    stop = true;
    for (auto& t : signers)
      if (t.joinable()) t.join();
  };
  // A failed ASSERT returns early: the signers stop and are joined then too.
  const std::unique_ptr<void, std::function<void(void*)>> joined(&signers, [&](void*) { join_signers(); });
  for (int t = 0; t < 4; ++t)
    signers.emplace_back([&] {
      firma::Client c = client();
      while (!stop) {
        const auto t0 = std::chrono::steady_clock::now();
        try {
          c.sign_data("firma-ec", firma::Bytes{4, 5, 6});
          ++signed_ok;
        } catch (const firma::Error& e) {
          ++failed;
          std::lock_guard lock(m);
          ++errors[e.name()];
          slowest_failure_ms = std::max(slowest_failure_ms, ms_since(t0));
        } catch (const firma::ConnectionError& e) {  // no answer within kReplyTimeout (a hang), or a lost connection
          ++failed;
          std::lock_guard lock(m);
          ++errors[std::string("no answer: ") + e.what()];
          slowest_failure_ms = std::max(slowest_failure_ms, ms_since(t0));
          return;  // the connection is spent
        }
      }
    });
  ASSERT_TRUE(eventually([&] { return signed_ok >= 40; })) << d->log();
  stop_server();
  ASSERT_TRUE(eventually([&] { return !token_status()["present"].get<bool>(); })) << d->log();
  // (Beyond kReplyTimeout: a signer stuck in a call shows as "no answer".)
  const bool failed_on = eventually([&] { return failed >= 40; }, std::chrono::seconds(20));
  join_signers();
  std::string seen;
  for (const auto& [name, n] : errors) seen += name + " x" + std::to_string(n) + "\n";
  ASSERT_TRUE(failed_on) << "signers kept failing while the server was gone; failures:\n" << seen << d->log();
  for (const auto& [name, n] : errors)
    EXPECT_TRUE(name == "io.firmad.Signer.TokenAbsent" || name == "io.firmad.Signer.TokenError") << name << " x" << n;
  EXPECT_GE(errors["io.firmad.Signer.TokenAbsent"], 30) << "once the token is known gone, signatures are refused TokenAbsent";
  EXPECT_LT(slowest_failure_ms, 2000) << "every failure is answered at once, none waits for the token";
  start_server();
  ASSERT_TRUE(eventually([&] { return token_status()["loggedIn"].get<bool>(); }, std::chrono::seconds(20))) << d->log();
  signs_and_verifies("after the crash");
  std::printf("[ figures  ] 4 signers: %d signatures, then %d failures (TokenAbsent %d, TokenError %d), slowest failure %.1f ms\n",
              signed_ok.load(), failed.load(), errors["io.firmad.Signer.TokenAbsent"], errors["io.firmad.Signer.TokenError"],
              slowest_failure_ms);
}

// Another token comes up at the server's address: same label, another
// serial (another SoftHSM store). It is refused and reported; the real one
// back in its place is served again.
TEST_F(RemoteToken, ImpostorAtTheServersAddressIsRefusedAndTheRealTokenServedWhenBack) {
  const fs::path other = rig.dir() / "impostor";
  fs::create_directories(other / "tokens");
  write_file(other / "softhsm2.conf", "directories.tokendir = " + (other / "tokens").string() + "\nobjectstore.backend = file\n");
  auto r = run("SOFTHSM2_CONF=" + quote((other / "softhsm2.conf").string()) +
               " softhsm2-util --init-token --free --label firmad-demo --pin " + TokenRig::kPin + " --so-pin 12345678");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  start_server();
  auto d = start_firmad();
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  signs_and_verifies("the real one");
  stop_server();
  start_server(other / "softhsm2.conf");
  ASSERT_TRUE(d->wait_for_log("event=token-replaced")) << d->log();
  ASSERT_TRUE(eventually([&] { return token_status().value("reason", "").find("not the one firmad served") != std::string::npos; }))
      << token_status();
  EXPECT_FALSE(token_status()["present"].get<bool>());
  EXPECT_EQ(token_status()["loginAttempts"], 1) << "no PIN was given to the impostor";
  try {
    client().sign_data("firma-ec", firma::Bytes{1});
    ADD_FAILURE() << "the impostor signed";
  } catch (const firma::Error& e) {
    EXPECT_EQ(e.name(), "io.firmad.Signer.TokenAbsent");
  }
  stop_server();
  start_server();
  ASSERT_TRUE(eventually([&] { return token_status()["loggedIn"].get<bool>(); }, std::chrono::seconds(20))) << d->log();
  signs_and_verifies("the real one again");
}

TEST_F(RemoteToken, ServerStartedAfterFirmadIsFound) {
  auto d = start_firmad();
  ASSERT_TRUE(eventually([&] {
    return token_status()["loginState"] == "absent";
  })) << d->log();
  start_server();
  ASSERT_TRUE(eventually([&] { return token_status()["loggedIn"].get<bool>(); }, std::chrono::seconds(20))) << d->log();
  signs_and_verifies("late server");
  // Known by its file, not by what its absent server would report.
  EXPECT_NE(d->log().find("event=token-module-one-call-at-a-time"), std::string::npos) << d->log();
}

}  // namespace
}  // namespace firmad::test
