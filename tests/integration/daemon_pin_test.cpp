// PIN custody: sources, one C_Login per attempt, administrators only, access lists.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <thread>

#include "daemon_fixture.hpp"

namespace firmad::test {
namespace {

class PinCustody : public ::testing::Test {
 protected:
  TokenRig rig;

  // firmad runs as its own uid (kDaemonUid), as under the shipped unit: the
  // token, the PIN file and the state are handed to it first; root is the
  // administrator.
  // (The fault-module tests keep a root firmad: their control file is the
  // test's, rewritten while firmad runs.)
  bool daemon_as_root = false;
  std::unique_ptr<Daemon> start(const std::map<std::string, std::string>& replace, const std::string& extra = "") {
    auto cfg = rig.write_config(replace, extra);
    Daemon::Options options;
    if (!daemon_as_root) {
      rig.hand_to(kDaemonUid);
      options.user = kDaemonUid;
      options.groups = {65534};  // nogroup: a socket_group it may give its socket to
    }
    return std::make_unique<Daemon>(cfg, rig.socket(), options);
  }
  firma::Client client() { return firma::Client(rig.socket().string()); }
  CommandResult ctl(const std::string& args, const std::string& stdin_text = "") {
    std::string cmd = quote(firmactl_binary().string()) + " --socket " + quote(rig.socket().string()) + " " + args;
    if (!stdin_text.empty()) cmd = "printf '%s\\n' " + quote(stdin_text) + " | " + cmd;
    return run(cmd);
  }
  firma::Json token_status() { return client().status()["tokens"][0]; }
  static std::string error_of(const std::function<void()>& f) {
    try {
      f();
    } catch (const firma::Error& e) {
      return e.name();
    }
    return "no error";
  }
  firma::Bytes digest() { return firma::Bytes(32, 7); }
};

TEST_F(PinCustody, WrongPinInFileIsTriedExactlyOnce) {
  write_file(rig.pin_file(), "999999\n");
  auto d = start({{"log_level", "log_level = \"debug\""}, {"sessions", "sessions = 1\nrefresh_interval_ms = 100"}});
  ASSERT_TRUE(d->wait_for_log("event=token-login-refused")) << d->log();
  auto t = token_status();
  EXPECT_EQ(t["loginState"], "pin-incorrect");
  EXPECT_FALSE(t["loggedIn"].get<bool>());
  EXPECT_EQ(t["loginAttempts"], 1);
  // Several refresh cycles pass; none of them logs in again.
  ASSERT_TRUE(eventually([&] {
    const std::string log = d->log();
    std::size_t n = 0;
    for (auto p = log.find("event=token-refresh "); p != std::string::npos; p = log.find("event=token-refresh ", p + 1)) ++n;
    return n >= 5;
  })) << d->log();
  EXPECT_EQ(token_status()["loginAttempts"], 1);
  EXPECT_EQ(error_of([&] { client().sign_digest("firma-ec", digest()); }), "io.firmad.Signer.NotLoggedIn");
  // The administrator fixes it with the right PIN; the token was not locked.
  auto r = ctl("login demo --pin-stdin", TokenRig::kPin);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(token_status()["loginAttempts"], 2);
  EXPECT_EQ(client().sign_digest("firma-ec", digest()).empty(), false);
  EXPECT_EQ(d->log().find("999999"), std::string::npos) << "the PIN never reaches the log";
}

TEST_F(PinCustody, AdministratorLogsInAndOutWithPromptedPin) {
  auto d = start({{"pin_source", "pin_source = \"admin\""}, {"pin_file", ""}});
  ASSERT_TRUE(d->wait_for_log("event=token-found")) << d->log();
  EXPECT_EQ(token_status()["loginState"], "logged-out");
  EXPECT_EQ(token_status()["pinSource"], "admin");
  EXPECT_EQ(error_of([&] { client().sign_digest("empresa", digest()); }), "io.firmad.Signer.NotLoggedIn");

  auto r = ctl("login demo --pin-stdin", "000000");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("refused the PIN"), std::string::npos) << r.out;
  EXPECT_EQ(token_status()["loginState"], "pin-incorrect");
  EXPECT_EQ(token_status()["loginAttempts"], 1);

  r = ctl("login demo --pin-stdin", TokenRig::kPin);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("logged-in"), std::string::npos);
  EXPECT_EQ(token_status()["loginAttempts"], 2);
  EXPECT_EQ(client().sign_digest("empresa", digest()).size(), 256u);

  r = ctl("logout demo");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(error_of([&] { client().sign_digest("empresa", digest()); }), "io.firmad.Signer.NotLoggedIn");
  EXPECT_EQ(error_of([&] { client().login("demo", std::nullopt); }), "io.firmad.Signer.PinSourceUnavailable");
  const std::string log = d->log();
  EXPECT_EQ(log.find(TokenRig::kPin), std::string::npos) << "the PIN never reaches the log";
  EXPECT_EQ(log.find("000000"), std::string::npos);
}

TEST_F(PinCustody, PinFileThatDisappearsOrOpensUpIsRefused) {
  auto d = start({});
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  ASSERT_EQ(ctl("logout demo").exit_code, 0);
  fs::remove(rig.pin_file());
  auto r = ctl("login demo --from-source");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("cannot open PIN file"), std::string::npos) << r.out;
  EXPECT_EQ(token_status()["loginState"], "pin-source-unavailable");

  write_file(rig.pin_file(), std::string(TokenRig::kPin) + "\n", 0644);
  r = ctl("login demo --from-source");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("accessible by group or others (mode 0644)"), std::string::npos) << r.out;
  EXPECT_EQ(token_status()["loginAttempts"], 1) << "no C_Login with an insecure PIN file";

  // Private again, and firmad's (root's 0600 file is closed to it).
  ASSERT_EQ(::chmod(rig.pin_file().c_str(), 0600), 0);
  ASSERT_EQ(::chown(rig.pin_file().c_str(), kDaemonUid, kDaemonUid), 0);
  r = ctl("login demo --from-source");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(token_status()["loggedIn"].get<bool>());
}

TEST_F(PinCustody, InsecurePinFileAtStartupIsNeverUsed) {
  fs::permissions(rig.pin_file(), static_cast<fs::perms>(0640));
  auto d = start({});
  ASSERT_TRUE(d->wait_for_log("event=token-login-refused")) << d->log();
  auto t = token_status();
  EXPECT_EQ(t["loginState"], "pin-source-unavailable");
  EXPECT_EQ(t["loginAttempts"], 0);
  EXPECT_NE(t["reason"].get<std::string>().find("chmod 600"), std::string::npos);
}

TEST_F(PinCustody, PinFromSystemdCredential) {
  TempDir creds;
  write_file(creds.path() / "firmad-pin", std::string(TokenRig::kPin) + "\n", 0400);
  // As systemd hands credentials to the service: readable by its user only.
  for (const fs::path& p : {creds.path(), creds.path() / "firmad-pin"})
    ASSERT_EQ(::chown(p.c_str(), kDaemonUid, kDaemonUid), 0);
  ::setenv("CREDENTIALS_DIRECTORY", creds.path().c_str(), 1);
  auto d = start({{"pin_source", "pin_source = \"credential\""}, {"pin_file", "pin_credential = \"firmad-pin\""}});
  ::unsetenv("CREDENTIALS_DIRECTORY");
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  EXPECT_EQ(token_status()["pinSource"], "credential");
  EXPECT_EQ(client().sign_digest("firma-ec", digest()).empty(), false);
}

TEST_F(PinCustody, OnlyAdministratorsLogInOrOut) {
  auto d = start({{"admin_users", "admin_users = [65534]"}});
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  auto r = ctl("logout demo");
  EXPECT_EQ(r.exit_code, 4) << r.out;
  r = ctl("login demo --pin-stdin", TokenRig::kPin);
  EXPECT_EQ(r.exit_code, 4) << r.out;
  EXPECT_TRUE(d->wait_for_log("event=access-denied level=warning method=Logout uid=0"));
  EXPECT_TRUE(token_status()["loggedIn"].get<bool>());
  EXPECT_EQ(token_status()["loginAttempts"], 1);
}

// Administrators as shipped: users of their own uid, administrators through
// a group (admin_groups), reaching the group-gated socket because they are in
// its group; root is no administrator once admin_users is set to none; a
// user in no group cannot connect and is told why.
TEST_F(PinCustody, AdministratorOfAnotherUidLogsOutAndInThroughItsGroup) {
  auto d = start({{"admin_users", "admin_users = []\nadmin_groups = [\"nogroup\"]"},
                  {"socket =", "socket = \"" + rig.socket().string() + "\"\nsocket_group = \"nogroup\""}});
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  auto as = [&](const std::string& who, const std::string& args, const std::string& stdin_text = "") {
    std::string cmd = "setpriv " + who + " " + quote(firmactl_binary().string()) + " --socket " + quote(rig.socket().string()) + " " + args;
    if (!stdin_text.empty()) cmd = "printf '%s\\n' " + quote(stdin_text) + " | " + cmd;
    return run(cmd);
  };
  const std::string admin = "--reuid=65530 --regid=65530 --groups=65534";
  auto r = as(admin, "logout demo");
  ASSERT_EQ(r.exit_code, 0) << r.out << d->log();
  EXPECT_FALSE(token_status()["loggedIn"].get<bool>());
  r = as(admin, "login demo --pin-stdin", TokenRig::kPin);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(token_status()["loggedIn"].get<bool>());

  EXPECT_EQ(ctl("logout demo").exit_code, 4) << "admin_users = [] leaves root out";
  r = as("--reuid=65529 --regid=65529 --clear-groups", "status");
  EXPECT_EQ(r.exit_code, 4) << r.out;  // refused by the socket: access denied
  EXPECT_NE(r.out.find("may be used by members of group nogroup, and uid 65529"), std::string::npos) << r.out;
}

TEST_F(PinCustody, SigningNeedsTheKeysAllowList) {
  auto d = start({}, "\n[keys.guarded]\ntoken = \"demo\"\nuri = \"pkcs11:object=firma-ec\"\nallow_users = [65534]\nallow_groups = [65534]\n");
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  try {
    client().sign_digest("guarded", digest());
    FAIL() << "root is not on the list";
  } catch (const firma::Error& e) {
    EXPECT_EQ(e.name(), "io.firmad.Signer.AccessDenied");
    EXPECT_EQ(e.parameters()["key"], "guarded");
  }
  EXPECT_TRUE(d->wait_for_log("event=access-denied level=warning method=Sign key=guarded uid=0 gid=0 pid="));
  EXPECT_EQ(client().sign_digest("firma-ec", digest()).empty(), false) << "the same key under an allowed alias signs";
}


}  // namespace
}  // namespace firmad::test

namespace firmad::test {
namespace {

// A token whose PIN flags the test sets, through tests/support/fault_module.c.
class PinFlags : public PinCustody {
 protected:
  fs::path control = rig.dir() / "fault";
  void SetUp() override {
    daemon_as_root = true;
    write_file(control, "");
    ::setenv("FIRMAD_FAULT_CONTROL", control.c_str(), 1);
  }
  void TearDown() override { ::unsetenv("FIRMAD_FAULT_CONTROL"); }
  std::unique_ptr<Daemon> start_faulty(const std::string& pin_source = "pin_source = \"file\"") {
    return start({{"module", std::string("module = \"") + FIRMAD_FAULT_MODULE + "\""},
                  {"pin_source", pin_source},
                  {"pin_file", pin_source.find("\"file\"") != std::string::npos ? "pin_file = \"" + rig.pin_file().string() + "\"" : ""},
                  {"log_level", "log_level = \"info\"\nmax_connections_per_peer = 128"},
                  {"sessions", "sessions = 1\nrefresh_interval_ms = 100"}});
  }
  long logins() { return counted_file(".logins"); }
  // A count the fault module keeps in "<control><suffix>" (0 if none yet).
  long counted_file(const std::string& suffix) {
    const std::string n = read_file(control.string() + suffix);
    return n.empty() ? 0 : std::stol(n);
  }
};

TEST_F(PinFlags, StatusReportsCountLowAndFinalTry) {
  auto d = start_faulty();
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  EXPECT_FALSE(token_status()["pinFlags"]["countLow"].get<bool>());
  write_file(control, "count_low final_try");
  ASSERT_TRUE(eventually([&] { return token_status()["pinFlags"]["finalTry"].get<bool>(); })) << d->log();
  auto flags = token_status()["pinFlags"];
  EXPECT_TRUE(flags["countLow"].get<bool>());
  EXPECT_FALSE(flags["locked"].get<bool>());
  EXPECT_NE(ctl("status").out.find("PIN: final try left"), std::string::npos);
  EXPECT_EQ(logins(), 1);
}

TEST_F(PinFlags, FinalTryIsNeverSpentAutomaticallyAndOnlyWithForce) {
  write_file(control, "final_try");
  auto d = start_faulty();
  ASSERT_TRUE(d->wait_for_log("event=token-login-refused")) << d->log();
  EXPECT_EQ(token_status()["loginState"], "pin-final-try");
  EXPECT_EQ(logins(), 0) << "no C_Login on the final try without an administrator";

  auto r = ctl("login demo --pin-stdin", TokenRig::kPin);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("--force"), std::string::npos) << r.out;
  EXPECT_EQ(logins(), 0);

  r = ctl("login demo --pin-stdin --force", TokenRig::kPin);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(logins(), 1);
  EXPECT_TRUE(token_status()["loggedIn"].get<bool>());
}

// A wrong PIN in the file costs one try, ever (issue 10): the refusal is
// remembered in the state directory, so restarts and reboots never offer it
// again; a changed file is tried once; an administrator's login clears it.
TEST_F(PinFlags, WrongPinFileCostsOneTryAcrossRestarts) {
  const fs::path memory = rig.dir() / "state" / "pin-refused-demo.json";
  write_file(rig.pin_file(), "999999\n");
  {
    auto d = start_faulty();
    ASSERT_TRUE(d->wait_for_log("event=token-login-refused")) << d->log();
    EXPECT_EQ(logins(), 1);
  }
  ASSERT_TRUE(fs::exists(memory));
  EXPECT_EQ(fs::status(memory).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_EQ(read_file(memory.string()).find("999999"), std::string::npos) << "a digest is kept, never the PIN";
  for (int restart = 1; restart <= 3; ++restart) {
    auto d = start_faulty();
    ASSERT_TRUE(d->wait_for_log("event=token-login-refused")) << d->log();
    const auto t = token_status();
    EXPECT_EQ(t["loginState"], "pin-incorrect");
    EXPECT_NE(t.value("reason", "").find("refused the PIN of PIN file " + rig.pin_file().string() + " at "), std::string::npos) << t;
    EXPECT_EQ(t["loginAttempts"], 0);
    EXPECT_EQ(logins(), 1) << "restart " << restart << " offered the refused PIN again";
  }
  // The file corrected: tried once, logged in, and the refusal forgotten.
  write_file(rig.pin_file(), std::string(TokenRig::kPin) + "\n");
  {
    auto d = start_faulty();
    ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
    EXPECT_EQ(logins(), 2);
  }
  EXPECT_FALSE(fs::exists(memory));
  // Wrong again; an administrator logs in by hand, which clears the memory:
  // the next start tries the (still wrong) file once more.
  write_file(rig.pin_file(), "999999\n");
  {
    auto d = start_faulty();
    ASSERT_TRUE(d->wait_for_log("event=token-login-refused")) << d->log();
    EXPECT_EQ(logins(), 3);
    auto r = ctl("login demo --pin-stdin", TokenRig::kPin);
    EXPECT_EQ(r.exit_code, 0) << r.out;
    EXPECT_EQ(logins(), 4);
  }
  EXPECT_FALSE(fs::exists(memory));
  auto d = start_faulty();
  ASSERT_TRUE(d->wait_for_log("event=token-login-refused")) << d->log();
  EXPECT_EQ(logins(), 5);
  EXPECT_EQ(d->log().find("999999"), std::string::npos) << "the PIN never reaches the log";
}

// A token that logs firmad out behind its back (another program reset the
// card, an HSM session timed out) is noticed by the refresh, shown, and
// logged in again with exactly one C_Login from the PIN file (issue 10).
TEST_F(PinFlags, LostLoginIsNoticedByTheRefreshAndRepairedWithOneLogin) {
  auto d = start_faulty();
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  EXPECT_EQ(logins(), 1);
  write_file(control, "lost_login=1");
  ASSERT_TRUE(d->wait_for_log("event=token-login-lost")) << d->log();
  ASSERT_TRUE(eventually([&] { return logins() == 2 && token_status()["loggedIn"].get<bool>(); })) << d->log();
  EXPECT_EQ(read_file(control.string() + ".lost"), "1\n");
  EXPECT_FALSE(client().sign_digest("firma-ec", digest()).empty());
  EXPECT_EQ(token_status()["loginState"], "logged-in");
  EXPECT_EQ(logins(), 2) << "exactly one new C_Login";
}

// The same, met first by a signature (the refresh is an hour away): that
// request fails NotLoggedIn, the token is looked at at once, and the next
// signature is made after one new C_Login.
TEST_F(PinFlags, LostLoginMetByASignatureIsRepairedBeforeTheNext) {
  auto d = start({{"module", std::string("module = \"") + FIRMAD_FAULT_MODULE + "\""},
                  {"pin_source", "pin_source = \"file\""},
                  {"sessions", "sessions = 1\nrefresh_interval_ms = 3600000"}});
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  write_file(control, "lost_login=1");
  EXPECT_EQ(error_of([&] { client().sign_digest("firma-ec", digest()); }), "io.firmad.Signer.NotLoggedIn");
  ASSERT_TRUE(d->wait_for_log("event=token-login-lost")) << d->log();
  ASSERT_TRUE(eventually([&] { return token_status()["loggedIn"].get<bool>(); })) << d->log();
  EXPECT_FALSE(client().sign_digest("firma-ec", digest()).empty());
  EXPECT_EQ(logins(), 2);
}

// With pin_source = "admin", a lost login waits for an administrator: status
// says what happened, and no C_Login is made until 'firmactl login'.
TEST_F(PinFlags, LostLoginWithAnAdministratorsPinWaitsForLogin) {
  auto d = start({{"module", std::string("module = \"") + FIRMAD_FAULT_MODULE + "\""},
                  {"pin_source", "pin_source = \"admin\""}, {"pin_file", ""},
                  {"sessions", "sessions = 1\nrefresh_interval_ms = 100"}});
  ASSERT_TRUE(d->wait_for_log("event=token-found")) << d->log();
  ASSERT_EQ(ctl("login demo --pin-stdin", TokenRig::kPin).exit_code, 0);
  EXPECT_EQ(logins(), 1);
  write_file(control, "lost_login=1");
  ASSERT_TRUE(d->wait_for_log("event=token-login-lost")) << d->log();
  const auto t = token_status();
  EXPECT_EQ(t["loginState"], "logged-out");
  EXPECT_NE(t.value("reason", "").find("logged firmad out"), std::string::npos) << t;
  EXPECT_NE(t.value("reason", "").find("firmactl login demo"), std::string::npos) << t;
  EXPECT_EQ(error_of([&] { client().sign_digest("firma-ec", digest()); }), "io.firmad.Signer.NotLoggedIn");
  EXPECT_EQ(logins(), 1);
  ASSERT_EQ(ctl("login demo --pin-stdin", TokenRig::kPin).exit_code, 0);
  EXPECT_EQ(logins(), 2);
  EXPECT_FALSE(client().sign_digest("firma-ec", digest()).empty());
}

// A token that stops answering (CKR_FUNCTION_FAILED on every refresh): status
// says so at once and signatures are refused without reaching it; one log
// line, not one per refresh; when it answers again firmad serves again.
TEST_F(PinFlags, TokenThatStopsAnsweringIsShownAndLoggedOncePerChange) {
  auto d = start_faulty();
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  write_file(control, "refresh_error");
  ASSERT_TRUE(d->wait_for_log("event=token-refresh-failed")) << d->log();
  auto t = token_status();
  EXPECT_EQ(t["loginState"], "error");
  EXPECT_FALSE(t["loggedIn"].get<bool>());
  EXPECT_NE(t.value("reason", "").find("CKR_FUNCTION_FAILED"), std::string::npos) << t;
  EXPECT_EQ(error_of([&] { client().sign_digest("firma-ec", digest()); }), "io.firmad.Signer.NotLoggedIn");
  // Ten refreshes later (100 ms apart): still the one line.
  const auto count = [&](const std::string& event) {
    const std::string log = d->log();
    std::size_t n = 0;
    for (auto p = log.find(event); p != std::string::npos; p = log.find(event, p + 1)) ++n;
    return n;
  };
  ASSERT_TRUE(eventually([&] {
    const std::string n = read_file(control.string() + ".refresh_errors");  // may be mid-rewrite: empty
    return !n.empty() && std::stol(n) >= 10;
  })) << d->log();
  EXPECT_EQ(count("event=token-refresh-failed"), 1u) << d->log();
  write_file(control, "");
  ASSERT_TRUE(d->wait_for_log("event=token-refresh-recovered")) << d->log();
  ASSERT_TRUE(eventually([&] { return token_status()["loggedIn"].get<bool>(); })) << d->log();
  EXPECT_FALSE(client().sign_digest("firma-ec", digest()).empty());
  EXPECT_EQ(logins(), 1) << "the login survived: no new C_Login";
}

// A module that loses its backend (p11-kit-client.so when its server dies:
// CKR_DEVICE_ERROR on every call, and still after the server is back, until
// C_Finalize + C_Initialize): the token shows absent at once, signatures
// fail TokenAbsent without reaching it, and when the backend is back firmad
// has re-initialised the module, finds the same token, logs in from the PIN
// file and serves, with no restart and a few log lines, not one per refresh
// (issue 10).
TEST_F(PinFlags, ModuleThatLosesItsBackendIsReinitialisedAndServesAgain) {
  auto d = start_faulty();
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  EXPECT_FALSE(client().sign_digest("firma-ec", digest()).empty());
  // (Read while the module may be rewriting it: an empty read is 0.)
  const auto inits = [&] {
    const std::string n = read_file(control.string() + ".inits");
    return n.empty() ? 0L : std::stol(n);
  };
  EXPECT_EQ(inits(), 1);
  write_file(control, "backend_gone");
  // The first signature meets the broken module and names its code; the
  // token is looked at at once, and from then on it is absent.
  const std::string first = error_of([&] { client().sign_digest("firma-ec", digest()); });
  EXPECT_TRUE(first == "io.firmad.Signer.TokenError" || first == "io.firmad.Signer.TokenAbsent") << first;
  ASSERT_TRUE(eventually([&] { return !token_status()["present"].get<bool>(); })) << d->log();
  EXPECT_EQ(token_status()["loginState"], "absent");
  EXPECT_EQ(error_of([&] { client().sign_digest("firma-ec", digest()); }), "io.firmad.Signer.TokenAbsent");
  // Gone for a while: re-initialised again and again (every discovery), logged once or twice.
  ASSERT_TRUE(eventually([&] { return inits() >= 4; })) << d->log();
  // The server is back: the module answers only after one more C_Initialize.
  write_file(control, "");
  ASSERT_TRUE(eventually([&] { return token_status()["loggedIn"].get<bool>(); })) << d->log();
  EXPECT_FALSE(client().sign_digest("firma-ec", digest()).empty());
  EXPECT_EQ(logins(), 2) << "one C_Login at start, one after the re-initialisation";
  EXPECT_EQ(token_status()["loginState"], "logged-in");
  const std::string log = d->log();
  std::size_t lines = 0;
  for (const char* event : {"event=token-backend-lost", "event=token-absent", "event=token-removed", "event=token-scan-failed"})
    for (auto p = log.find(event); p != std::string::npos; p = log.find(event, p + 1)) ++lines;
  EXPECT_LE(lines, 4u) << "one line per change, not one per refresh (" << inits() << " initialisations)\n" << log;
  EXPECT_EQ(log.find("event=token-replaced"), std::string::npos) << "the same token came back\n" << log;
}

TEST_F(PinFlags, RemovedTokenFailsFastAndServesAgainWhenBack) {
  auto d = start_faulty();
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  EXPECT_FALSE(client().sign_digest("firma-ec", digest()).empty());
  write_file(control, "removed");
  EXPECT_EQ(error_of([&] { client().sign_digest("firma-ec", digest()); }), "io.firmad.Signer.TokenAbsent");
  ASSERT_TRUE(eventually([&] { return !token_status()["present"].get<bool>(); })) << d->log();
  EXPECT_EQ(token_status()["loginState"], "absent");
  EXPECT_EQ(error_of([&] { client().sign_digest("firma-ec", digest()); }), "io.firmad.Signer.TokenAbsent");
  // Back in the slot: the same token, logged in again from the PIN file.
  write_file(control, "");
  ASSERT_TRUE(eventually([&] { return token_status()["loggedIn"].get<bool>(); })) << d->log();
  EXPECT_FALSE(client().sign_digest("firma-ec", digest()).empty());
  EXPECT_EQ(logins(), 2) << "one C_Login at start, one after reinsertion";
  EXPECT_TRUE(d->wait_for_log("event=token-removed"));
  d.reset();
  const std::string stale = read_file(control.string() + ".stale_closes");
  EXPECT_TRUE(stale.empty()) << stale << " C_CloseSession call(s) on handles the removal had closed";
}

TEST_F(PinFlags, SlowTokenWithAFullQueueStillAnswersStatus) {
  auto d = start_faulty();
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  write_file(control, "slow_ms=200");
  // 64 signatures at 200 ms each on one session: 12.8 s of queued work.
  std::vector<std::thread> signers;
  std::atomic<int> done{0};
  struct JoinAll {
    std::vector<std::thread>& threads;
    ~JoinAll() {
      for (auto& t : threads)
        if (t.joinable()) t.join();
    }
  } join_all{signers};  // also when an assertion below returns early
  for (int i = 0; i < 64; ++i) {
    signers.emplace_back([&] {
      try {
        firma::Client c(rig.socket().string());
        c.sign_digest("firma-ec", digest());
      } catch (const std::exception&) {
      }
      ++done;
    });
  }
  ASSERT_TRUE(eventually([&] { return token_status()["queued"].get<int>() >= 32; })) << d->log();
  // Status comes from cached state: answered while the queue still holds
  // seconds of work. Had it waited behind the queue, it would see it empty.
  for (int i = 0; i < 5; ++i) {
    auto t = token_status();
    EXPECT_GE(t["queued"].get<int>(), 16) << "status waited behind the queue";
    EXPECT_TRUE(t["loggedIn"].get<bool>());
  }
  EXPECT_LT(done.load(), 64) << "the signatures were still queued when status answered";
  write_file(control, "");
  for (auto& s : signers) s.join();
  EXPECT_EQ(done.load(), 64);
}

TEST_F(PinFlags, SignatureInFlightWhenTheTokenIsPulledFailsCleanly) {
  auto d = start_faulty();
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  write_file(control, "slow_ms=400");
  std::string outcome;
  std::thread signer([&] { outcome = error_of([&] { client().sign_digest("firma-ec", digest()); }); });
  struct Join {
    std::thread& t;
    ~Join() {
      if (t.joinable()) t.join();
    }
  } join{signer};
  // The request is inside the token when it is pulled.
  ASSERT_TRUE(eventually([&] { return fs::exists(control.string() + ".in_sign"); })) << d->log();
  write_file(control, "slow_ms=400 removed");
  signer.join();
  EXPECT_EQ(outcome, "io.firmad.Signer.TokenAbsent");
  write_file(control, "");
  ASSERT_TRUE(eventually([&] { return token_status()["loggedIn"].get<bool>(); })) << d->log();
  EXPECT_FALSE(client().sign_digest("firma-ec", digest()).empty());
}

TEST_F(PinFlags, DeviceErrorIsReportedWithItsCode) {
  auto d = start_faulty();
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  write_file(control, "device_error");
  try {
    client().sign_digest("firma-ec", digest());
    FAIL() << "the token failed";
  } catch (const firma::Error& e) {
    EXPECT_EQ(e.name(), "io.firmad.Signer.TokenError");
    EXPECT_EQ(e.parameters()["code"], "CKR_DEVICE_ERROR");
    EXPECT_EQ(e.parameters()["call"], "C_Sign");
  }
  write_file(control, "");
  EXPECT_FALSE(client().sign_digest("firma-ec", digest()).empty()) << "the next signature works";
}

// A module that floods stderr (tpm2-pkcs11 while its TPM is gone): its lines
// reach firmad's log as throttled module-stderr events, with the count of
// those left out, never one line each.
TEST_F(PinFlags, ModuleStderrFloodIsLoggedThrottled) {
  auto d = start_faulty();
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  const auto flood_start = std::chrono::steady_clock::now();
  write_file(control, "stderr_flood");
  ASSERT_TRUE(d->wait_for_log("event=log-throttled level=warning of=module-stderr")) << d->log().substr(0, 4000);
  std::this_thread::sleep_for(std::chrono::seconds(2));  // ~20 refreshes: ~2,000 lines written
  write_file(control, "");
  const auto flood_seconds =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - flood_start).count() + 2;
  const std::string log = d->log();
  std::size_t lines = 0;
  for (auto p = log.find("event=module-stderr"); p != std::string::npos; p = log.find("event=module-stderr", p + 1)) ++lines;
  EXPECT_GE(lines, 1u);
  EXPECT_LE(lines, 5u * static_cast<std::size_t>(flood_seconds)) << "at most 5 a second over " << flood_seconds << " s";
  EXPECT_NE(log.find("line=\"ERROR: fault module: diagnostic line"), std::string::npos) << log.substr(0, 2000);
  EXPECT_EQ(log.find("\nERROR: fault module"), std::string::npos) << "no raw module line in firmad's log";
  EXPECT_FALSE(client().sign_digest("firma-ec", digest()).empty()) << "firmad goes on";
}

// A TPM in dictionary-attack lockout refuses every login, the right PIN too,
// with CKR_PIN_LOCKED and no locked flag: status says it clears by itself,
// not that a security officer must unlock it; once it cleared, an
// administrator's login (the file's PIN again) works.
TEST_F(PinFlags, LoginRefusedForAWhileSaysItClearsByItself) {
  write_file(control, "lockout");
  auto d = start_faulty();
  ASSERT_TRUE(d->wait_for_log("event=token-login-refused")) << d->log();
  auto t = token_status();
  EXPECT_EQ(t["loginState"], "pin-locked");
  EXPECT_FALSE(t["pinFlags"]["locked"].get<bool>());
  EXPECT_NE(t.value("reason", "").find("clears by itself"), std::string::npos) << t;
  EXPECT_EQ(t.value("reason", "").find("security officer"), std::string::npos) << t;
  write_file(control, "");
  auto r = ctl("login demo --from-source");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(token_status()["loggedIn"].get<bool>());
  EXPECT_EQ(logins(), 2);
}

TEST_F(PinFlags, LockedPinIsReportedAndNotTried) {
  write_file(control, "locked");
  auto d = start_faulty();
  ASSERT_TRUE(d->wait_for_log("event=token-login-refused")) << d->log();
  auto t = token_status();
  EXPECT_EQ(t["loginState"], "pin-locked");
  EXPECT_TRUE(t["pinFlags"]["locked"].get<bool>());
  auto r = ctl("login demo --pin-stdin --force", TokenRig::kPin);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("locked"), std::string::npos) << r.out;
  EXPECT_EQ(logins(), 0);
}


// A PIN-pad reader (CKF_PROTECTED_AUTHENTICATION_PATH): status says so,
// 'firmactl login' asks for no PIN and firmad calls C_Login without one while
// the holder types it on the reader (issue 10, item 6).
TEST_F(PinFlags, PinPadReaderIsLoggedInWithoutAPin) {
  write_file(control, "pinpad=" + std::string(TokenRig::kPin));
  auto d = start_faulty("pin_source = \"admin\"");
  ASSERT_TRUE(d->wait_for_log("event=token-found")) << d->log();
  EXPECT_TRUE(token_status()["pinPad"].get<bool>()) << token_status();
  EXPECT_NE(ctl("status").out.find("PIN pad"), std::string::npos);
  // A PIN and the PIN pad at once make no sense.
  EXPECT_EQ(error_of([&] { client().call("io.firmad.Signer.Login", {{"token", "demo"}, {"pin", "1"}, {"pinPad", true}}); }),
            "org.varlink.service.InvalidParameter");
  // No PIN on standard input, no terminal: the holder types it on the reader.
  auto r = run(quote(firmactl_binary().string()) + " --socket " + quote(rig.socket().string()) + " login demo < /dev/null");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("on the reader's PIN pad"), std::string::npos) << r.out;
  EXPECT_EQ(counted_file(".pinpad_logins"), 1);
  EXPECT_EQ(logins(), 1);
  EXPECT_TRUE(token_status()["loggedIn"].get<bool>());
  EXPECT_FALSE(client().sign_digest("firma-ec", digest()).empty());
  ASSERT_TRUE(d->wait_for_log("event=token-login-on-reader")) << d->log();
}

// A token without a PIN pad is not logged in "on the reader".
TEST_F(PinFlags, PinPadLoginOnATokenWithoutOneIsRefused) {
  auto d = start_faulty("pin_source = \"admin\"");
  ASSERT_TRUE(d->wait_for_log("event=token-found")) << d->log();
  EXPECT_FALSE(token_status()["pinPad"].get<bool>());
  EXPECT_EQ(error_of([&] { client().login_on_reader("demo"); }), "org.varlink.service.InvalidParameter");
  EXPECT_EQ(logins(), 0);
  EXPECT_FALSE(token_status()["loggedIn"].get<bool>());
}

// A PIV card's signing key (slot 9c) needs the PIN for every signature
// (CKA_ALWAYS_AUTHENTICATE): C_Login(CKU_CONTEXT_SPECIFIC) between
// C_SignInit and C_Sign. firmad signs with it only where firmad.toml allows
// it for the key, giving the kept PIN once per signature; a refused context
// PIN is never offered again (issue 10, item 5).
class PinPerSignature : public PinFlags {
 protected:
  long counted(const std::string& what) {
    const std::string n = read_file(control.string() + "." + what);
    return n.empty() ? 0 : std::stol(n);
  }
  std::unique_ptr<Daemon> start_piv(bool allowed, const std::string& pin_source = "pin_source = \"file\"") {
    std::map<std::string, std::string> replace = {{"module", std::string("module = \"") + FIRMAD_FAULT_MODULE + "\""},
                                                  {"pin_source", pin_source},
                                                  {"sessions", "sessions = 2\nrefresh_interval_ms = 100"}};
    if (pin_source.find("admin") != std::string::npos) replace["pin_file"] = "";
    if (allowed) replace["uri = \"pkcs11:object=firma-ec"] = "uri = \"pkcs11:object=firma-ec;id=%02\"\npin_per_signature = true";
    return start(replace);
  }
  firma::Json key_status(const std::string& alias) {
    const auto status = client().status();
    for (const auto& k : status["keys"])
      if (k["alias"] == alias) return k;
    return nullptr;
  }
  bool signs_and_verifies(const std::string& text) {
    const firma::Bytes data(text.begin(), text.end());
    const auto sig = client().sign_data("firma-ec", data);
    const fs::path in = rig.dir() / "v.txt", out = rig.dir() / "v.sig";
    write_file(in, text);
    write_file(out, std::string(sig.begin(), sig.end()));
    return run("openssl dgst -sha256 -verify " + quote(rig.public_key_pem("02").string()) + " -signature " + quote(out.string()) + " " +
               quote(in.string()))
               .exit_code == 0;
  }
};

TEST_F(PinPerSignature, KeyIsListedWithTheReasonAndRefusedWithoutTheOptIn) {
  write_file(control, "piv");
  auto d = start_piv(false);
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  const auto k = key_status("firma-ec");

  EXPECT_TRUE(k["pinPerSignature"].get<bool>()) << k;
  EXPECT_NE(k.value("unusable", "").find("pin_per_signature = true"), std::string::npos) << k;
  try {
    client().sign_digest("firma-ec", digest());
    FAIL() << "signed without the opt-in";
  } catch (const firma::Error& e) {
    EXPECT_EQ(e.name(), "io.firmad.Signer.KeyNeedsPinPerSignature");
    EXPECT_EQ(e.parameters()["key"], "firma-ec");
    EXPECT_NE(e.parameters()["reason"].get<std::string>().find("CKA_ALWAYS_AUTHENTICATE"), std::string::npos) << e.parameters();
  }
  write_file(rig.dir() / "doc.txt", "alta");
  auto r = ctl("sign firma-ec " + quote((rig.dir() / "doc.txt").string()) + " -o " + quote((rig.dir() / "doc.sig").string()));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("needs the PIN for every signature"), std::string::npos) << r.out;
  EXPECT_EQ(counted("context_logins"), 0) << "nothing reached the token";
}

TEST_F(PinPerSignature, OptedInKeyGetsTheKeptPinOncePerSignature) {
  write_file(control, "piv");
  auto d = start_piv(true);
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  EXPECT_FALSE(key_status("firma-ec").contains("unusable")) << key_status("firma-ec");
  EXPECT_TRUE(key_status("empresa").contains("unusable")) << "a key without the opt-in stays refused";
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(signs_and_verifies("recibo " + std::to_string(i)));
  // Four signers at once, on two sessions: each signature its own context login.
  std::vector<std::thread> signers;
  std::atomic<int> made{0};
  for (int t = 0; t < 4; ++t)
    signers.emplace_back([&] {
      for (int i = 0; i < 5; ++i)
        if (!client().sign_digest("firma-ec", digest()).empty()) ++made;
    });
  for (auto& t : signers) t.join();
  EXPECT_EQ(made, 20);
  EXPECT_EQ(counted("context_logins"), 25);
  EXPECT_EQ(logins(), 1) << "one user login; the rest are context logins";
  EXPECT_EQ(d->log().find(TokenRig::kPin), std::string::npos) << "the PIN never reaches the log";
}

TEST_F(PinPerSignature, RefusedContextPinIsNeverOfferedAgainUntilAnAdministratorLogsIn) {
  write_file(control, "piv");
  auto d = start_piv(true, "pin_source = \"admin\"");
  ASSERT_TRUE(d->wait_for_log("event=token-found")) << d->log();
  auto r = ctl("login demo --pin-stdin", TokenRig::kPin);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(signs_and_verifies("con el PIN del administrador"));
  // Another program changed the PIN: the card refuses the kept one once,
  // even with four signers at it over two sessions at the same moment.
  write_file(control, "piv pin_changed");
  std::map<std::string, int> errors;
  std::mutex m;
  std::vector<std::thread> signers;
  for (int t = 0; t < 4; ++t)
    signers.emplace_back([&] {
      const std::string e = error_of([&] { client().sign_digest("firma-ec", digest()); });
      std::lock_guard lock(m);
      ++errors[e];
    });
  for (auto& t : signers) t.join();
  EXPECT_EQ(errors["io.firmad.Signer.PinIncorrect"], 1);
  EXPECT_EQ(errors["io.firmad.Signer.KeyNeedsPinPerSignature"], 3);
  EXPECT_EQ(counted("context_refused"), 1) << "the refused PIN was offered more than once";
  for (int i = 0; i < 3; ++i) {
    try {
      client().sign_digest("firma-ec", digest());
      ADD_FAILURE() << "signed with a refused PIN";
    } catch (const firma::Error& e) {
      EXPECT_EQ(e.name(), "io.firmad.Signer.KeyNeedsPinPerSignature");
      EXPECT_NE(e.parameters()["reason"].get<std::string>().find("refused the kept PIN"), std::string::npos) << e.parameters();
    }
  }
  EXPECT_EQ(counted("context_logins"), 2) << "the refused PIN was offered again";
  EXPECT_NE(key_status("firma-ec").value("unusable", "").find("refused"), std::string::npos);
  ASSERT_TRUE(d->wait_for_log("event=signature-pin-refused")) << d->log();
  // The administrator logs out and in again (the card's PIN is right again).
  write_file(control, "piv");
  EXPECT_EQ(ctl("logout demo").exit_code, 0);
  r = ctl("login demo --pin-stdin", TokenRig::kPin);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(signs_and_verifies("otra vez"));
  EXPECT_EQ(counted("context_logins"), 3);
}

// Importing onto a PIV card (objects only for its security officer) is
// refused before anything is written, with the reason (issue 10, item 7).
TEST_F(PinPerSignature, ImportOntoATokenThatRefusesUserWritesIsRefusedUpFront) {
  write_file(control, "piv");
  auto d = start_piv(true);
  ASSERT_TRUE(d->wait_for_log("event=token-login ")) << d->log();
  const fs::path work = rig.dir() / "cred";
  fs::create_directories(work);
  auto r = run("cd " + quote(work.string()) + " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout k.pem "
               "-subj /CN=PIV -days 30 -out c.pem 2>&1 && openssl pkcs12 -export -inkey k.pem -in c.pem -passout pass:x -out c.pfx");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const auto keys_before = client().list_keys().size();
  r = ctl("import piv --token demo --pfx " + quote((work / "c.pfx").string()) + " --password-stdin", "x");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("nothing was imported"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("security officer"), std::string::npos) << r.out;
  EXPECT_TRUE(d->wait_for_log("event=import-refused")) << d->log();
  EXPECT_EQ(client().list_keys().size(), keys_before);
}

// A PIV card locks its PIN after 3 wrong tries and never reports a final
// try: a wrong PIN file costs it one try, however often firmad starts.
TEST_F(PinPerSignature, WrongPinFileCostsAPivCardOneOfItsThreeTries) {
  write_file(control, "piv");
  write_file(rig.pin_file(), "999999\n");
  for (int start = 0; start < 4; ++start) {
    auto d = start_piv(true);
    ASSERT_TRUE(d->wait_for_log("event=token-login-refused")) << d->log();
    EXPECT_EQ(token_status()["loginState"], "pin-incorrect");
    EXPECT_FALSE(token_status()["pinFlags"]["locked"].get<bool>()) << "two tries are left on the card";
    EXPECT_EQ(counted("wrong_pins"), 1) << "start " << start;
  }
}

}  // namespace
}  // namespace firmad::test
