// A SoftHSM token and a firmad process shared by the tests of a suite.
#pragma once
#include <gtest/gtest.h>

#include <memory>

#include "client/firma.hpp"
#include "rig.hpp"

namespace firmad::test {

class DaemonSuite : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { start(); }
  // A fresh token and a daemon on its configuration, changed as
  // TokenRig::write_config says.
  // firmad runs as kDaemonUid, not root, as under the shipped unit; the
  // socket's group is nogroup, the primary group of the other uids the tests
  // run clients as (setpriv --regid=65534), and firmad is a member of it (a
  // process may give a file only to a group of its own).
  static void start(const std::map<std::string, std::string>& replace = {}, const std::string& extra = "") {
    rig_ = std::make_unique<TokenRig>();
    rig_->hand_to(kDaemonUid);
    auto changes = replace;
    changes.emplace("socket =", "socket = \"" + rig_->socket().string() + "\"\nsocket_group = \"nogroup\"");
    Daemon::Options options;
    options.user = kDaemonUid;
    options.groups = {65534};
    daemon_ = std::make_unique<Daemon>(rig_->write_config(changes, extra), rig_->socket(), options);
    ASSERT_TRUE(daemon_->wait_for_log("event=token-login")) << daemon_->log();
  }
  static void TearDownTestSuite() {
    daemon_.reset();
    rig_.reset();
  }

  static firma::Client client() { return firma::Client(rig_->socket().string()); }

  // Runs firmactl against the suite's daemon.
  static CommandResult ctl(const std::string& args, const std::string& stdin_text = "") {
    std::string cmd = quote(firmactl_binary().string()) + " --socket " + quote(rig_->socket().string()) + " " + args;
    if (!stdin_text.empty()) cmd = "printf '%s' " + quote(stdin_text) + " | " + cmd;
    return run(cmd);
  }

  static fs::path file(const std::string& name) { return rig_->dir() / name; }

  static std::string bytes(const firma::Bytes& b) { return std::string(b.begin(), b.end()); }

  // A well-behaved client still gets a verifiable signature: every abuse test
  // ends with this.
  static void expect_daemon_still_signs() {
    auto c = client();
    const std::string text = "still serving";
    const auto sig = c.sign_data("firma-ec", firma::Bytes(text.begin(), text.end()));
    write_file(file("still.txt"), text);
    write_file(file("still.sig"), bytes(sig));
    const auto r = run("openssl dgst -sha256 -verify " + quote(rig_->public_key_pem("02").string()) + " -signature " +
                       quote(file("still.sig").string()) + " " + quote(file("still.txt").string()));
    EXPECT_EQ(r.exit_code, 0) << r.out;
  }

  static std::unique_ptr<TokenRig> rig_;
  static std::unique_ptr<Daemon> daemon_;
};

// A firmad as its own uid (kDaemonUid) on `rig`'s token, its socket in the
// group nogroup, with one more alias, "compartida", for firma-p384's objects
// that root and uid 65532 may use: for what other uids see and may do.
inline std::unique_ptr<Daemon> start_with_shared_key(TokenRig& rig) {
  rig.hand_to(kDaemonUid);
  const std::string config = rig.write_config(
      {{"socket =", "socket = \"" + rig.socket().string() + "\"\nsocket_group = \"nogroup\""}},
      "\n[keys.compartida]\ntoken = \"demo\"\nuri = \"pkcs11:object=firma-p384;id=%04\"\nallow_users = [0, 65532]\n");
  Daemon::Options options;
  options.user = kDaemonUid;
  options.groups = {65534};
  return std::make_unique<Daemon>(config, rig.socket(), options);
}

inline std::unique_ptr<TokenRig> DaemonSuite::rig_;
inline std::unique_ptr<Daemon> DaemonSuite::daemon_;

}  // namespace firmad::test
