// Unit tests of firmad.toml loading: what is accepted, and how refusals read.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/config.hpp"

namespace firmad {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kToken = R"(
[tokens.t]
module = "/usr/lib/softhsm/libsofthsm2.so"
uri = "pkcs11:token=t"
)";

// Each test gets its own directory under /tmp, removed afterwards.
class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/firmad-config-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr) << "mkdtemp: " << std::strerror(errno);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }

  // Writes `text` to <dir>/firmad.toml and returns the path.
  std::string write(std::string_view text, const std::string& name = "firmad.toml") {
    const std::string path = (dir_ / name).string();
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    EXPECT_TRUE(out.good()) << "could not write " << path;
    return path;
  }

  // Asserts that loading `text` fails with a ConfigError naming the file and
  // containing every one of `parts` (the key path, the accepted values ...).
  void expect_refused(std::string_view text, std::initializer_list<std::string_view> parts) {
    const std::string path = write(text);
    SCOPED_TRACE("config:\n" + std::string(text));
    try {
      load_config(path);
      ADD_FAILURE() << "load_config accepted the file";
    } catch (const ConfigError& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.rfind(path, 0), 0u) << "does not start with the file name: " << what;
      for (std::string_view part : parts) EXPECT_NE(what.find(part), std::string::npos) << "'" << part << "' not in: " << what;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "threw something other than ConfigError: " << e.what();
    }
  }

  fs::path dir_;
};

TEST_F(ConfigTest, LoadsAFullValidFile) {
  const std::string path = write(R"(# every section and key firmad knows
[daemon]
socket = "/run/firmad-test/firmad.sock"
socket_mode = "0640"
socket_group = "root"
state_directory = "/var/lib/firmad-test"
max_connections = 64
max_connections_per_peer = 4
idle_timeout_ms = 15000
log_level = "debug"

[access]
admin_users = ["root", 0, 1000]
admin_groups = ["root", 0]

[tokens.from-file]
module = "/usr/lib/softhsm/libsofthsm2.so"
uri = "pkcs11:token=signing"
sessions = 4
queue_limit = 32
pin_source = "file"
pin_file = "/etc/firmad/signing.pin"
refresh_interval_ms = 2000

[tokens.from_credential]
module = "p11-kit-proxy"
uri = "pkcs11:token=cred"
pin_source = "credential"
pin_credential = "token-pin"

[tokens."by.admin"]
module = "/usr/lib/opensc-pkcs11.so"
uri = "pkcs11:serial=1234"
pin_source = "admin"

[keys.release]
token = "from-file"
uri = "pkcs11:object=release;type=private"
allow_users = ["root", 0, 4242]
allow_groups = ["root", 0]

[keys.nightly]
token = "by.admin"
uri = "pkcs11:id=%01"
)");
  const Config c = load_config(path);
  EXPECT_EQ(c.path, path);

  EXPECT_EQ(c.daemon.socket, "/run/firmad-test/firmad.sock");
  EXPECT_EQ(c.daemon.socket_mode, 0640u);
  EXPECT_EQ(c.daemon.socket_group, gid_t{0});
  EXPECT_EQ(c.daemon.state_directory, "/var/lib/firmad-test");
  EXPECT_EQ(c.daemon.max_connections, 64u);
  EXPECT_EQ(c.daemon.max_connections_per_peer, 4u);
  EXPECT_EQ(c.daemon.idle_timeout, std::chrono::milliseconds(15000));
  EXPECT_EQ(c.daemon.log_level, log::Level::Debug);

  EXPECT_EQ(c.admins.users, (std::vector<uid_t>{0, 0, 1000}));
  EXPECT_EQ(c.admins.groups, (std::vector<gid_t>{0, 0}));

  ASSERT_EQ(c.tokens.size(), 3u);
  const TokenConfig* file = c.token("from-file");
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->module, "/usr/lib/softhsm/libsofthsm2.so");
  EXPECT_EQ(file->uri, "pkcs11:token=signing");
  EXPECT_EQ(file->sessions, 4u);
  EXPECT_EQ(file->queue_limit, 32u);
  EXPECT_EQ(file->pin_source, PinSource::File);
  EXPECT_EQ(file->pin_file, "/etc/firmad/signing.pin");
  EXPECT_EQ(file->refresh_interval, std::chrono::milliseconds(2000));

  const TokenConfig* cred = c.token("from_credential");
  ASSERT_NE(cred, nullptr);
  EXPECT_EQ(cred->pin_source, PinSource::Credential);
  EXPECT_EQ(cred->pin_credential, "token-pin");
  EXPECT_EQ(cred->sessions, 1u);

  const TokenConfig* admin = c.token("by.admin");
  ASSERT_NE(admin, nullptr);
  EXPECT_EQ(admin->pin_source, PinSource::Admin);
  EXPECT_EQ(admin->uri, "pkcs11:serial=1234");

  ASSERT_EQ(c.keys.size(), 2u);
  const KeyConfig* release = c.key("release");
  ASSERT_NE(release, nullptr);
  EXPECT_EQ(release->token, "from-file");
  EXPECT_EQ(release->uri, "pkcs11:object=release;type=private");
  EXPECT_EQ(release->allow.users, (std::vector<uid_t>{0, 0, 4242}));
  EXPECT_EQ(release->allow.groups, (std::vector<gid_t>{0, 0}));
  const KeyConfig* nightly = c.key("nightly");
  ASSERT_NE(nightly, nullptr);
  EXPECT_TRUE(nightly->allow.users.empty());
  EXPECT_EQ(c.key("missing"), nullptr);
  EXPECT_EQ(c.token("missing"), nullptr);
}

TEST_F(ConfigTest, AMinimalFileGetsTheDocumentedDefaults) {
  const Config c = load_config(write(kToken));
  const DaemonConfig defaults;
  EXPECT_EQ(c.daemon.socket, defaults.socket);
  EXPECT_EQ(c.daemon.socket_mode, 0660u);
  EXPECT_FALSE(c.daemon.socket_group.has_value());
  EXPECT_EQ(c.daemon.log_level, log::Level::Info);
  EXPECT_EQ(c.admins.users, (std::vector<uid_t>{0}));  // root administers when [access] is absent
  ASSERT_EQ(c.tokens.size(), 1u);
  EXPECT_EQ(c.tokens[0].name, "t");
  EXPECT_EQ(c.tokens[0].pin_source, PinSource::Admin);
  EXPECT_EQ(c.tokens[0].sessions, 1u);
  EXPECT_TRUE(c.keys.empty());
}

TEST_F(ConfigTest, AcceptsSessionCountsAtTheLimits) {
  for (int n : {1, 64}) {
    const Config c = load_config(write(std::string(kToken) + "sessions = " + std::to_string(n) + "\n"));
    EXPECT_EQ(c.tokens.at(0).sessions, static_cast<std::size_t>(n));
  }
}

TEST_F(ConfigTest, RefusesAMissingFile) {
  const std::string path = (dir_ / "absent.toml").string();
  try {
    load_config(path);
    ADD_FAILURE() << "load_config accepted a missing file";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(path, 0), 0u) << e.what();
  }
}

TEST_F(ConfigTest, RefusesAnEmptyFileForLackOfTokens) { expect_refused("", {"tokens", "required"}); }

TEST_F(ConfigTest, RefusesAFileWithoutTokens) {
  expect_refused("[daemon]\nlog_level = \"info\"\n", {": tokens: ", "[tokens.<name>]"});
  expect_refused("[tokens]\n", {": tokens: "});
}

TEST_F(ConfigTest, RefusesAnUnknownTopLevelKey) {
  expect_refused(std::string(kToken) + "\n[deamon]\nsocket = \"/run/x.sock\"\n", {": deamon: unknown key", "daemon"});
}

TEST_F(ConfigTest, RefusesAnUnknownDaemonKey) {
  expect_refused("[daemon]\nsocket_mod = \"0660\"\n" + std::string(kToken), {": daemon.socket_mod: unknown key", "socket_mode"});
}

TEST_F(ConfigTest, RefusesAnUnknownTokenKey) {
  expect_refused(std::string(kToken) + "sesions = 2\n", {": tokens.t.sesions: unknown key", "sessions"});
}

TEST_F(ConfigTest, RefusesAnUnknownKeyKey) {
  expect_refused(std::string(kToken) + "[keys.k]\ntoken = \"t\"\nuri = \"pkcs11:object=k\"\nalow_users = [\"root\"]\n",
                 {": keys.k.alow_users: unknown key", "allow_users"});
}

TEST_F(ConfigTest, RefusesATokenWithoutModule) {
  expect_refused("[tokens.t]\nuri = \"pkcs11:token=t\"\n", {": tokens.t.module: ", "required"});
  expect_refused("[tokens.t]\nmodule = \"\"\nuri = \"pkcs11:token=t\"\n", {": tokens.t.module: "});
}

TEST_F(ConfigTest, RefusesATokenWithoutUri) {
  expect_refused("[tokens.t]\nmodule = \"/usr/lib/m.so\"\n", {": tokens.t.uri: ", "required"});
}

TEST_F(ConfigTest, RefusesAUriThatIsNotPkcs11) {
  expect_refused("[tokens.t]\nmodule = \"/usr/lib/m.so\"\nuri = \"token=t\"\n", {": tokens.t.uri: ", "pkcs11:"});
  expect_refused("[tokens.t]\nmodule = \"/usr/lib/m.so\"\nuri = \"PKCS11:token=t\"\n", {": tokens.t.uri: "});
  expect_refused(std::string(kToken) + "[keys.k]\ntoken = \"t\"\nuri = \"object=k\"\n", {": keys.k.uri: ", "pkcs11:"});
}

TEST_F(ConfigTest, RefusesZeroSessions) {
  expect_refused(std::string(kToken) + "sessions = 0\n", {": tokens.t.sessions: ", "from 1 to 64"});
}

TEST_F(ConfigTest, RefusesSixtyFiveSessions) {
  expect_refused(std::string(kToken) + "sessions = 65\n", {": tokens.t.sessions: ", "from 1 to 64"});
}

TEST_F(ConfigTest, RefusesASessionCountThatIsNotAnInteger) {
  expect_refused(std::string(kToken) + "sessions = \"4\"\n", {": tokens.t.sessions: "});
  expect_refused(std::string(kToken) + "sessions = 4.0\n", {": tokens.t.sessions: "});
}

TEST_F(ConfigTest, RefusesAnUnknownPinSourceListingTheAcceptedOnes) {
  expect_refused(std::string(kToken) + "pin_source = \"bogus\"\n",
                 {": tokens.t.pin_source: ", "\"file\"", "\"credential\"", "\"admin\""});
}

TEST_F(ConfigTest, RefusesPinSourceFileWithoutPinFile) {
  expect_refused(std::string(kToken) + "pin_source = \"file\"\n", {": tokens.t.pin_file: ", "required"});
}

TEST_F(ConfigTest, RefusesARelativePinFile) {
  expect_refused(std::string(kToken) + "pin_source = \"file\"\npin_file = \"etc/firmad/pin\"\n",
                 {": tokens.t.pin_file: ", "absolute"});
}

TEST_F(ConfigTest, RefusesAPinFileWithAnotherPinSource) {
  expect_refused(std::string(kToken) + "pin_file = \"/etc/firmad/pin\"\n", {": tokens.t.pin_file: ", "pin_source"});
}

TEST_F(ConfigTest, RefusesACredentialNameThatIsAPath) {
  expect_refused(std::string(kToken) + "pin_source = \"credential\"\npin_credential = \"/run/pin\"\n",
                 {": tokens.t.pin_credential: "});
}

TEST_F(ConfigTest, RefusesAKeyNamingAnUnknownToken) {
  expect_refused(std::string(kToken) + "[keys.k]\ntoken = \"tt\"\nuri = \"pkcs11:object=k\"\n",
                 {": keys.k.token: ", "'tt'", "accepted: t"});
}

TEST_F(ConfigTest, RefusesAnUnknownUserName) {
  expect_refused(std::string(kToken) +
                     "[keys.k]\ntoken = \"t\"\nuri = \"pkcs11:object=k\"\nallow_users = [\"root\", \"no-such-user-f1rmad\"]\n",
                 {": keys.k.allow_users: ", "no-such-user-f1rmad"});
  expect_refused("[access]\nadmin_users = [\"no-such-user-f1rmad\"]\n" + std::string(kToken),
                 {": access.admin_users: ", "no-such-user-f1rmad"});
}

TEST_F(ConfigTest, RefusesANegativeUid) {
  expect_refused(std::string(kToken) + "[keys.k]\ntoken = \"t\"\nuri = \"pkcs11:object=k\"\nallow_users = [-1]\n",
                 {": keys.k.allow_users: "});
}

TEST_F(ConfigTest, RefusesASocketModeWithAccessForOthers) {
  expect_refused("[daemon]\nsocket_mode = \"0666\"\n" + std::string(kToken), {": daemon.socket_mode: ", "\"0660\""});
  expect_refused("[daemon]\nsocket_mode = \"0001\"\n" + std::string(kToken), {": daemon.socket_mode: "});
}

TEST_F(ConfigTest, RefusesASocketModeThatIsNotOctal) {
  for (std::string_view mode : {"abc", "0688", "", "-0660", "01777", "0660 "}) {
    expect_refused("[daemon]\nsocket_mode = \"" + std::string(mode) + "\"\n" + std::string(kToken),
                   {": daemon.socket_mode: "});
  }
  expect_refused("[daemon]\nsocket_mode = 432\n" + std::string(kToken), {": daemon.socket_mode: "});
}

TEST_F(ConfigTest, RefusesASocketPathTooLongForAUnixSocket) {
  expect_refused("[daemon]\nsocket = \"/" + std::string(120, 's') + "\"\n" + std::string(kToken),
                 {": daemon.socket: ", "107"});
  expect_refused("[daemon]\nsocket = \"run/firmad.sock\"\n" + std::string(kToken), {": daemon.socket: ", "absolute"});
}

TEST_F(ConfigTest, RefusesAnUnknownLogLevel) {
  expect_refused("[daemon]\nlog_level = \"verbose\"\n" + std::string(kToken), {": daemon.log_level: ", "debug"});
}

TEST_F(ConfigTest, RefusesATokenNameWithSpaces) {
  expect_refused("[tokens.\"my token\"]\nmodule = \"/m.so\"\nuri = \"pkcs11:\"\n", {": tokens.my token: "});
}

TEST_F(ConfigTest, RefusesASectionThatIsNotATable) {
  expect_refused("daemon = 1\n" + std::string(kToken), {": daemon: ", "table"});
  expect_refused("tokens = [1]\n", {": tokens: ", "table"});
}

TEST_F(ConfigTest, ReportsATomlSyntaxErrorWithFileAndLine) {
  const std::string text = "[daemon]\nlog_level = \"info\"\nsocket = /run/firmad.sock\n" + std::string(kToken);
  const std::string path = write(text);
  try {
    load_config(path);
    ADD_FAILURE() << "load_config accepted a syntax error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(path + ":3:", 0), 0u) << e.what();
  }
}

TEST_F(ConfigTest, ReportsATruncatedFileAsASyntaxError) {
  const std::string text = std::string(kToken) + "[keys.k]\ntoken = \"t\"\nuri = \"pkcs11:obj";
  const std::string path = write(text);
  try {
    load_config(path);
    ADD_FAILURE() << "load_config accepted a truncated file";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(path + ":7:", 0), 0u) << e.what();
  }
}

TEST_F(ConfigTest, EveryPrefixOfAValidFileLoadsOrFailsWithConfigError) {
  const std::string full = "[daemon]\nsocket_mode = \"0660\"\n[access]\nadmin_users = [\"root\", 0]\n" +
                           std::string(kToken) + "pin_source = \"file\"\npin_file = \"/p\"\n" +
                           "[keys.k]\ntoken = \"t\"\nuri = \"pkcs11:object=k\"\nallow_users = [0]\n";
  ASSERT_NO_THROW(load_config(write(full)));
  int refused = 0;
  for (std::size_t n = 0; n < full.size(); ++n) {
    const std::string path = write(std::string_view(full).substr(0, n));
    try {
      load_config(path);
    } catch (const ConfigError&) {
      ++refused;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "prefix of " << n << " bytes: " << e.what();
    }
  }
  EXPECT_GT(refused, 0);
}

TEST_F(ConfigTest, RefusesBytesThatAreNotUtf8) {
  expect_refused(std::string(kToken) + "# \xff\xfe\n", {":"});
}

// Disabled until daemon/config.cpp names the key in socket_group errors: today
// an unknown group is reported as "daemon.g".
TEST_F(ConfigTest, RefusesAnUnknownSocketGroupNamingTheKey) {
  expect_refused("[daemon]\nsocket_group = \"no-such-group-f1rmad\"\n" + std::string(kToken),
                 {": daemon.socket_group: ", "no-such-group-f1rmad"});
}

}  // namespace
}  // namespace firmad
