// Token faults firmad rides out: dead sessions, a reader's glitch, and a token altered while it was away.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "daemon_fixture.hpp"

namespace firmad::test {
namespace {

// firmad on a token wrapped by tests/support/fault_module.c, driven by the
// control file `control`.
class TokenFaults : public ::testing::Test {
 protected:
  TokenRig rig;
  fs::path control = rig.dir() / "fault";

  void SetUp() override {
    write_file(control, "");
    ::setenv("FIRMAD_FAULT_CONTROL", control.c_str(), 1);
  }
  void TearDown() override { ::unsetenv("FIRMAD_FAULT_CONTROL"); }

  std::unique_ptr<Daemon> start(int sessions, const std::string& extra = "", const fs::path& module = FIRMAD_FAULT_MODULE) {
    auto cfg = rig.write_config({{"module", "module = \"" + module.string() + "\""},
                                 {"log_level", "log_level = \"info\"\nmax_connections_per_peer = 128"},
                                 {"sessions", "sessions = " + std::to_string(sessions) + "\nrefresh_interval_ms = 100"}},
                                extra);
    return std::make_unique<Daemon>(cfg, rig.socket());
  }
  firma::Client client() { return firma::Client(rig.socket().string()); }
  firma::Json token_status() { return client().status()["tokens"][0]; }
  firma::Json key(const std::string& alias) {
    for (auto& k : client().list_keys())
      if (k["alias"] == alias) return k;
    return nullptr;
  }
  static std::string error_of(const std::function<void()>& f) {
    try {
      f();
    } catch (const firma::Error& e) {
      return e.name();
    }
    return "no error";
  }
  CommandResult ctl(const std::string& args) {
    return run(quote(firmactl_binary().string()) + " --socket " + quote(rig.socket().string()) + " " + args);
  }

  // A counter the fault module keeps next to the control file ("logins", "killed").
  long counter(const std::string& name) {
    const std::string n = read_file(control.string() + "." + name);
    return n.empty() ? 0 : std::stol(n);
  }
  // The session handles that made a signature since the record was last cleared.
  std::set<std::string> signing_sessions() {
    std::set<std::string> handles;
    std::istringstream in(read_file(control.string() + ".signed"));
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) handles.insert(line);
    return handles;
  }
  static std::size_t occurrences(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
    return n;
  }

  struct Outcome {
    std::string text;       // what was signed
    firma::Bytes signature;  // empty when it failed
    std::string error;       // the Varlink error name, empty on success
    firma::Json parameters;
  };
  // `clients` clients at once, each signing `each` texts with firma-ec.
  std::vector<Outcome> sign_concurrently(int clients, int each) {
    std::vector<Outcome> outcomes;
    std::mutex m;
    std::vector<std::thread> threads;
    for (int c = 0; c < clients; ++c) {
      threads.emplace_back([&, c] {
        firma::Client cl(rig.socket().string());
        for (int i = 0; i < each; ++i) {
          Outcome o;
          o.text = "factura " + std::to_string(c) + "-" + std::to_string(i);
          try {
            o.signature = cl.sign_data("firma-ec", firma::Bytes(o.text.begin(), o.text.end()));
          } catch (const firma::Error& e) {
            o.error = e.name();
            o.parameters = e.parameters();
          } catch (const std::exception& e) {
            o.error = e.what();
          }
          std::lock_guard lock(m);
          outcomes.push_back(std::move(o));
        }
      });
    }
    for (auto& t : threads) t.join();
    return outcomes;
  }
  // Whether OpenSSL verifies the signature with the PEM public key.
  bool verifies(const Outcome& o, const fs::path& pub) {
    const fs::path data = rig.dir() / "v.txt", sig = rig.dir() / "v.sig";
    write_file(data, o.text);
    write_file(sig, std::string(o.signature.begin(), o.signature.end()));
    return run("openssl dgst -sha256 -verify " + quote(pub.string()) + " -signature " + quote(sig.string()) + " " +
               quote(data.string()))
               .exit_code == 0;
  }
};

TEST_F(TokenFaults, DeadSessionIsReopenedWhileTheOtherSessionSignsOn) {
  auto d = start(2);
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  const fs::path pub = rig.public_key_pem("02");
  // The next session to start a signature dies under it; the token stays.
  write_file(control, "session_invalid=1");
  auto outcomes = sign_concurrently(4, 10);
  EXPECT_EQ(counter("killed"), 1);
  std::vector<Outcome> failed;
  for (const auto& o : outcomes) {
    if (!o.error.empty()) {
      failed.push_back(o);
      continue;
    }
    EXPECT_TRUE(verifies(o, pub)) << o.text;
  }
  ASSERT_EQ(failed.size(), 1u) << "only the request on the dead session fails\n" << d->log();
  EXPECT_EQ(failed[0].error, "io.firmad.Signer.TokenError");
  EXPECT_EQ(failed[0].parameters["code"], "CKR_SESSION_HANDLE_INVALID");
  EXPECT_EQ(failed[0].parameters["call"], "C_SignInit");

  ASSERT_TRUE(d->wait_for_log("event=session-reopened")) << d->log();
  const std::string log = d->log();
  const auto line = log.substr(log.find("event=session-reopened"));
  EXPECT_NE(line.substr(0, line.find('\n')).find("logged_in=yes"), std::string::npos) << "it shares the login: " << line;
  auto t = token_status();
  EXPECT_TRUE(t["present"].get<bool>());
  EXPECT_EQ(t["loginState"], "logged-in");
  EXPECT_EQ(log.find("event=token-removed"), std::string::npos) << log;

  // Both sessions sign again, with no new C_Login.
  write_file(control, "");
  fs::remove(control.string() + ".signed");
  std::vector<Outcome> later;
  ASSERT_TRUE(eventually([&] {
    for (auto& o : sign_concurrently(4, 4)) later.push_back(std::move(o));
    return signing_sessions().size() >= 2;
  })) << "signatures came from " << signing_sessions().size() << " session(s)\n" << d->log();
  for (const auto& o : later) {
    EXPECT_EQ(o.error, "") << o.text;
    if (o.error.empty()) {
      EXPECT_TRUE(verifies(o, pub)) << o.text;
    }
  }
  EXPECT_EQ(counter("logins"), 1) << "the new session shares the login: no C_Login";
  EXPECT_EQ(d->log().find("event=token-removed"), std::string::npos);
  d.reset();  // shutdown closes the live sessions
  EXPECT_EQ(counter("stale_closes"), 0) << "the dead session's handle was closed, not forgotten";
}

TEST_F(TokenFaults, DeviceRemovedWhileTheTokenStaysFailsOneRequestOnly) {
  auto d = start(1);
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  write_file(control, "device_removed");
  EXPECT_EQ(error_of([&] { client().sign_digest("firma-ec", firma::Bytes(32, 7)); }), "io.firmad.Signer.TokenAbsent");
  // firmad looks at once, finds the token still there and keeps it.
  ASSERT_TRUE(d->wait_for_log("event=token-checked")) << d->log();
  write_file(control, "");
  auto t = token_status();
  EXPECT_TRUE(t["present"].get<bool>());
  EXPECT_EQ(t["loginState"], "logged-in");
  Outcome o{"after the glitch", {}, "", nullptr};
  o.signature = client().sign_data("firma-ec", firma::Bytes(o.text.begin(), o.text.end()));
  EXPECT_TRUE(verifies(o, rig.public_key_pem("02")));
  EXPECT_EQ(counter("logins"), 1);
  EXPECT_EQ(d->log().find("event=token-removed"), std::string::npos) << d->log();
}

TEST_F(TokenFaults, TokenBackWithTheSameSerialButAnotherKeyIsRefused) {
  auto d = start(1);
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  EXPECT_FALSE(client().sign_digest("firma-ec", firma::Bytes(32, 7)).empty());
  write_file(control, "removed");
  ASSERT_TRUE(eventually([&] { return !token_status()["present"].get<bool>(); })) << d->log();
  // While it is away, someone puts another key under firma-ec's label and id.
  const std::string tool = std::string("pkcs11-tool --module ") + TokenRig::kModule +
                           " --token-label firmad-demo --login --pin " + TokenRig::kPin + " ";
  for (const char* type : {"privkey", "pubkey", "cert"}) {
    auto r = run(tool + "--delete-object --type " + type + " --id 02");
    ASSERT_EQ(r.exit_code, 0) << r.out;
  }
  auto r = run(tool + "--keypairgen --key-type EC:prime256v1 --id 02 --label firma-ec");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  write_file(control, "");

  ASSERT_TRUE(d->wait_for_log("event=token-replaced")) << d->log();
  const std::string log = d->log();
  const auto line = log.substr(log.find("event=token-replaced"));
  EXPECT_NE(line.substr(0, line.find('\n')).find("why="), std::string::npos) << line;
  auto t = token_status();
  EXPECT_FALSE(t["present"].get<bool>());
  EXPECT_EQ(t["loginState"], "error");
  const std::string reason = t["reason"];
  EXPECT_NE(reason.find("firma-ec"), std::string::npos) << reason;
  EXPECT_NE(reason.find("another public key"), std::string::npos) << reason;
  EXPECT_EQ(error_of([&] { client().sign_digest("firma-ec", firma::Bytes(32, 7)); }), "io.firmad.Signer.TokenAbsent");
  EXPECT_EQ(error_of([&] { client().sign_digest("empresa", firma::Bytes(32, 7)); }), "io.firmad.Signer.TokenAbsent")
      << "nothing on a token that is not the one served is used";
  // Each later look at the slot refuses it again; no PIN goes to it.
  ASSERT_TRUE(eventually([&] { return occurrences(d->log(), "event=token-replaced") >= 3; })) << d->log();
  EXPECT_FALSE(token_status()["present"].get<bool>());
  EXPECT_EQ(error_of([&] { client().sign_digest("firma-ec", firma::Bytes(32, 7)); }), "io.firmad.Signer.TokenAbsent");
  EXPECT_EQ(counter("logins"), 1) << "no C_Login on the altered token";
}

TEST_F(TokenFaults, AnotherTokenInTheSlotIsRefusedAndTheRightOneServedWhenBack) {
  auto d = start(1);
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  write_file(control, "removed");
  ASSERT_TRUE(eventually([&] { return !token_status()["present"].get<bool>(); })) << d->log();
  // A token with the same label but another serial goes in.
  write_file(control, "other_serial");
  ASSERT_TRUE(d->wait_for_log("event=token-replaced")) << d->log();
  EXPECT_NE(d->log().find("serial=firmad-other"), std::string::npos) << d->log();
  auto t = token_status();
  EXPECT_FALSE(t["present"].get<bool>());
  EXPECT_EQ(t["loginState"], "error");
  EXPECT_NE(t["reason"].get<std::string>().find("(serial firmad-other) is not the one firmad served"), std::string::npos)
      << t["reason"];
  EXPECT_EQ(error_of([&] { client().sign_digest("firma-ec", firma::Bytes(32, 7)); }), "io.firmad.Signer.TokenAbsent");
  EXPECT_EQ(counter("logins"), 1) << "no C_Login on another token";
  // The right one back: served again after one new C_Login.
  write_file(control, "");
  ASSERT_TRUE(eventually([&] { return token_status()["loggedIn"].get<bool>(); })) << d->log();
  EXPECT_FALSE(client().sign_digest("firma-ec", firma::Bytes(32, 7)).empty());
  EXPECT_EQ(counter("logins"), 2);
}

TEST_F(TokenFaults, KeyRenewedByFirmadIsNotTakenForAnAlteredToken) {
  const std::string renewal = "\n[keys.firma-ec.renewal]\nprovider = \"helper\"\nkey = \"new\"\nautomatic = false\n"
                              "trust_anchors = [\"" + rig.ca().string() + "\"]\n"
                              "command = [\"/bin/bash\", \"" + (source_dir() / "tests/support/certmonger-helper.sh").string() +
                              "\", \"" + (rig.dir() / "ca").string() + "\"]\nhelper_timeout = \"3s\"\n";
  auto d = start(1, renewal);
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  const auto before = key("firma-ec")["publicKey"];
  auto r = ctl("renew firma-ec");
  ASSERT_EQ(r.exit_code, 0) << r.out << d->log();
  ASSERT_NE(key("firma-ec")["publicKey"], before) << "the renewal made a new key";

  write_file(control, "removed");
  ASSERT_TRUE(eventually([&] { return !token_status()["present"].get<bool>(); })) << d->log();
  write_file(control, "");
  ASSERT_TRUE(eventually([&] { return token_status()["loggedIn"].get<bool>(); })) << d->log();
  EXPECT_FALSE(client().sign_digest("firma-ec", firma::Bytes(32, 7)).empty());
  EXPECT_EQ(d->log().find("event=token-replaced"), std::string::npos) << d->log();
}

// p11-kit-client.so shares one socket between a process's threads and can
// leave a call hanging for ever when its server dies with two calls in
// flight: firmad calls it one call at a time, signing threads and refreshes
// alike, knowing it by its file name. The fault module records the most
// calls it ever had in flight ("overlap"); copied under that name, it is
// taken for p11-kit-client.so. Each run: 4 clients x 6 slow signatures on 2
// sessions, every one verified; returns whether firmad logged the rule.
class ModuleCalls : public TokenFaults {
 protected:
  bool sign_under_load(const fs::path& module) {
    write_file(control, "slow_ms=20");
    const auto d = start(2, "", module);
    EXPECT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
    const fs::path pub = rig.public_key_pem("02");
    for (const auto& o : sign_concurrently(4, 6)) EXPECT_TRUE(o.error.empty() && verifies(o, pub)) << o.text << ": " << o.error;
    return d->log().find("event=token-module-one-call-at-a-time") != std::string::npos;
  }
};

TEST_F(ModuleCalls, P11KitClientIsCalledOneCallAtATime) {
  const fs::path client = rig.dir() / "p11-kit-client.so";
  fs::copy_file(FIRMAD_FAULT_MODULE, client);
  EXPECT_TRUE(sign_under_load(client));
  EXPECT_EQ(counter("overlap"), 1) << "two calls were in flight at once";
}

// The same load on another module keeps both sessions busy at once: the
// measure above can see an overlap, and only p11-kit-client.so is held to one call.
TEST_F(ModuleCalls, OtherModulesAreCalledFromEverySessionAtOnce) {
  EXPECT_FALSE(sign_under_load(FIRMAD_FAULT_MODULE));
  EXPECT_GE(counter("overlap"), 2) << "the two sessions never signed at once";
}

}  // namespace
}  // namespace firmad::test
