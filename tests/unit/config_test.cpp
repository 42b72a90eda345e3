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
#include <utility>
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

// The shipped example has an [access] table with admin_groups only: root
// stays an administrator; admin_users = [] takes it away.
TEST_F(ConfigTest, AdminUsersIsRootUnlessSetWhateverElseAccessHolds) {
  Config c = load_config(write("[access]\nadmin_groups = [\"root\"]\n" + std::string(kToken)));
  EXPECT_EQ(c.admins.users, (std::vector<uid_t>{0}));
  EXPECT_EQ(c.admins.groups, (std::vector<gid_t>{0}));
  c = load_config(write("[access]\nadmin_users = []\nadmin_groups = [\"root\"]\n" + std::string(kToken)));
  EXPECT_TRUE(c.admins.users.empty());
  c = load_config(write("[access]\n" + std::string(kToken)));
  EXPECT_EQ(c.admins.users, (std::vector<uid_t>{0}));
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

TEST_F(ConfigTest, KeyOptInsDefaultOffAndTakeOnlyBooleans) {
  const std::string key = "[keys.k]\ntoken = \"t\"\nuri = \"pkcs11:object=k\"\n";
  Config c = load_config(write(std::string(kToken) + key));
  ASSERT_EQ(c.keys.size(), 1u);
  EXPECT_FALSE(c.keys[0].allow_sha1);
  EXPECT_FALSE(c.keys[0].pin_per_signature);
  c = load_config(write(std::string(kToken) + key + "allow_sha1 = true\npin_per_signature = true\n"));
  EXPECT_TRUE(c.keys[0].allow_sha1);
  EXPECT_TRUE(c.keys[0].pin_per_signature);
  expect_refused(std::string(kToken) + key + "allow_sha1 = \"yes\"\n", {"keys.k.allow_sha1", "true or false"});
  expect_refused(std::string(kToken) + key + "pin_per_signature = 1\n", {"keys.k.pin_per_signature", "true or false"});
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

// The refusal names the whole key (it was once reported as "daemon.g").
TEST_F(ConfigTest, RefusesAnUnknownSocketGroupNamingTheKey) {
  expect_refused("[daemon]\nsocket_group = \"no-such-group-f1rmad\"\n" + std::string(kToken),
                 {": daemon.socket_group: ", "no-such-group-f1rmad"});
}

// [keys.<alias>.renewal] -------------------------------------------------------

constexpr std::string_view kIdse = R"(provider = "idse"
url = "https://idse.example.test:8443"
trust_anchors = ["/etc/firmad/ca.pem"]
)";

constexpr std::string_view kHelper = R"(provider = "helper"
command = ["/usr/libexec/certmonger/test-helper", "--ca", "x"]
trust_anchors = ["/etc/firmad/ca.pem"]
)";

constexpr std::string_view kEst = R"(provider = "est"
url = "https://ca.example.test/.well-known/est"
trust_anchors = ["/etc/firmad/ca.pem"]
)";

// A file with one key whose renewal table holds `body`.
std::string with_renewal(std::string_view body) {
  return std::string(kToken) + "[keys.k]\ntoken = \"t\"\nuri = \"pkcs11:object=k\"\n[keys.k.renewal]\n" + std::string(body);
}

TEST_F(ConfigTest, LoadsAFullRenewalTable) {
  const Config c = load_config(write(with_renewal(R"(provider = "idse"
key = "reuse"
key_type = "ec-p384"
subject = "/C=MX/O=Empresa Ejemplo SA de CV/CN=EMPRESA EJEMPLO/serialNumber=EEJ010101AAA"
trust_anchors = ["/etc/firmad/ca.pem", "/etc/firmad/ca2.pem"]
automatic = false
before_days = 45
jitter = "2h"
retry_initial = "5m"
retry_max = "1d"
warn_days = [7, 60, 7, 2]
certificate_file = "/etc/firmad/empresa.pem"
chain_file = "/etc/firmad/empresa-chain.pem"
file_owner = "root"
file_group = 0
file_mode = "0640"
post_install = ["/bin/systemctl", "reload", "x.service"]
post_install_timeout = "500ms"
url = "https://idse.example.test:8443/"
lookup_path = "/v2/serie?npie={npie}&x=1"
submit_path = "/v2/solicitud"
fetch_path = "/v2/instala/{serial}"
connect_timeout = "2s"
timeout = "2m"
max_response_bytes = 65536
max_redirects = 0
acceptance_text = "ACEPTO"
)")));
  const KeyConfig* k = c.key("k");
  ASSERT_NE(k, nullptr);
  ASSERT_TRUE(k->renewal.has_value());
  const RenewalConfig& r = *k->renewal;
  EXPECT_EQ(r.provider, RenewalProvider::Idse);
  EXPECT_FALSE(r.new_key);
  EXPECT_EQ(r.key_type, "ec-p384");
  EXPECT_EQ(r.subject, "/C=MX/O=Empresa Ejemplo SA de CV/CN=EMPRESA EJEMPLO/serialNumber=EEJ010101AAA");
  EXPECT_EQ(r.trust_anchors, (std::vector<std::string>{"/etc/firmad/ca.pem", "/etc/firmad/ca2.pem"}));
  EXPECT_FALSE(r.automatic);
  EXPECT_EQ(r.before_days, 45);
  EXPECT_EQ(r.jitter, std::chrono::hours(2));
  EXPECT_EQ(r.retry_initial, std::chrono::minutes(5));
  EXPECT_EQ(r.retry_max, std::chrono::hours(24));
  EXPECT_EQ(r.warn_days, (std::vector<int>{60, 7, 2}));  // sorted, duplicates dropped
  EXPECT_EQ(r.certificate_file, "/etc/firmad/empresa.pem");
  EXPECT_EQ(r.chain_file, "/etc/firmad/empresa-chain.pem");
  EXPECT_EQ(r.file_owner, uid_t{0});
  EXPECT_EQ(r.file_group, gid_t{0});
  EXPECT_EQ(r.file_mode, 0640u);
  EXPECT_EQ(r.post_install, (std::vector<std::string>{"/bin/systemctl", "reload", "x.service"}));
  EXPECT_EQ(r.post_install_timeout, std::chrono::milliseconds(500));
  EXPECT_EQ(r.url, "https://idse.example.test:8443");  // the trailing '/' dropped: paths are appended
  EXPECT_EQ(r.lookup_path, "/v2/serie?npie={npie}&x=1");
  EXPECT_EQ(r.submit_path, "/v2/solicitud");
  EXPECT_EQ(r.fetch_path, "/v2/instala/{serial}");
  EXPECT_EQ(r.connect_timeout, std::chrono::seconds(2));
  EXPECT_EQ(r.timeout, std::chrono::minutes(2));
  EXPECT_EQ(r.max_response_bytes, 65536u);
  EXPECT_EQ(r.max_redirects, 0);
  EXPECT_EQ(r.acceptance_text, "ACEPTO");
}

TEST_F(ConfigTest, AMinimalRenewalTableGetsTheDocumentedDefaults) {
  const Config c = load_config(write(with_renewal(kIdse) + "[keys.plain]\ntoken = \"t\"\nuri = \"pkcs11:object=p\"\n"));
  EXPECT_FALSE(c.key("plain")->renewal.has_value());
  ASSERT_TRUE(c.key("k")->renewal.has_value());
  const RenewalConfig& r = *c.key("k")->renewal;
  const RenewalConfig defaults;
  EXPECT_EQ(r.provider, RenewalProvider::Idse);
  EXPECT_TRUE(r.new_key);
  EXPECT_EQ(r.key_type, "");
  EXPECT_EQ(r.subject, "");
  EXPECT_TRUE(r.automatic);
  EXPECT_FALSE(r.before_days.has_value());
  EXPECT_DOUBLE_EQ(r.lifetime_fraction, 2.0 / 3.0);
  EXPECT_EQ(r.jitter, std::chrono::hours(12));
  EXPECT_EQ(r.retry_initial, std::chrono::seconds(60));
  EXPECT_EQ(r.retry_max, std::chrono::hours(6));
  EXPECT_EQ(r.warn_days, (std::vector<int>{30, 7, 1}));
  EXPECT_EQ(r.certificate_file, "");
  EXPECT_FALSE(r.file_owner.has_value());
  EXPECT_EQ(r.file_mode, 0644u);
  EXPECT_TRUE(r.post_install.empty());
  EXPECT_EQ(r.post_install_timeout, std::chrono::seconds(30));
  EXPECT_EQ(r.url, "https://idse.example.test:8443");
  EXPECT_EQ(r.lookup_path, defaults.lookup_path);
  EXPECT_EQ(r.submit_path, defaults.submit_path);
  EXPECT_EQ(r.fetch_path, defaults.fetch_path);
  EXPECT_EQ(r.connect_timeout, std::chrono::seconds(10));
  EXPECT_EQ(r.timeout, std::chrono::seconds(60));
  EXPECT_EQ(r.max_response_bytes, 1024u * 1024u);
  EXPECT_EQ(r.max_redirects, 3);
  EXPECT_EQ(r.acceptance_text, defaults.acceptance_text);
}

TEST_F(ConfigTest, LoadsAHelperRenewal) {
  const Config c = load_config(
      write(with_renewal(std::string(kHelper) + "helper_timeout = \"90s\"\nhelper_max_output = 4096\nlifetime_fraction = 0.5\n")));
  const RenewalConfig& r = *c.key("k")->renewal;
  EXPECT_EQ(r.provider, RenewalProvider::Helper);
  EXPECT_EQ(r.command, (std::vector<std::string>{"/usr/libexec/certmonger/test-helper", "--ca", "x"}));
  EXPECT_EQ(r.helper_timeout, std::chrono::seconds(90));
  EXPECT_EQ(r.helper_max_output, 4096u);
  EXPECT_DOUBLE_EQ(r.lifetime_fraction, 0.5);
  EXPECT_TRUE(r.url.empty());
}

TEST_F(ConfigTest, LoadsAnEstRenewal) {
  const Config c = load_config(write(with_renewal(std::string(kEst) + "key_type = \"rsa-3072\"\n")));
  const RenewalConfig& r = *c.key("k")->renewal;
  EXPECT_EQ(r.provider, RenewalProvider::Est);
  EXPECT_EQ(r.url, "https://ca.example.test/.well-known/est");
  EXPECT_EQ(r.key_type, "rsa-3072");
}

TEST_F(ConfigTest, ReadsDurationsInEveryUnit) {
  const std::pair<std::string_view, std::chrono::milliseconds> cases[] = {
      {"1500ms", std::chrono::milliseconds(1500)}, {"45s", std::chrono::seconds(45)},
      {"3m", std::chrono::minutes(3)},             {"1h", std::chrono::hours(1)}};
  for (const auto& [text, value] : cases) {
    const Config c = load_config(write(with_renewal(std::string(kIdse) + "timeout = \"" + std::string(text) + "\"\n")));
    EXPECT_EQ(c.key("k")->renewal->timeout, value) << text;
  }
  const Config c = load_config(write(with_renewal(std::string(kIdse) + "jitter = \"0s\"\nretry_max = \"2d\"\n")));
  EXPECT_EQ(c.key("k")->renewal->jitter, std::chrono::seconds(0));
  EXPECT_EQ(c.key("k")->renewal->retry_max, std::chrono::hours(48));
}

TEST_F(ConfigTest, AcceptsAnEmptyWarnDaysList) {
  const Config c = load_config(write(with_renewal(std::string(kIdse) + "warn_days = []\n")));
  EXPECT_TRUE(c.key("k")->renewal->warn_days.empty());
}

TEST_F(ConfigTest, RefusesAnUnknownRenewalKey) {
  expect_refused(with_renewal(std::string(kIdse) + "jiter = \"1h\"\n"), {": keys.k.renewal.jiter: unknown key", "jitter"});
  expect_refused(std::string(kToken) + "[keys.k]\ntoken = \"t\"\nuri = \"pkcs11:object=k\"\nrenewal = 1\n",
                 {": keys.k.renewal: ", "table"});
}

TEST_F(ConfigTest, RefusesARenewalWithoutOrWithAnUnknownProvider) {
  expect_refused(with_renewal("url = \"https://x\"\ntrust_anchors = [\"/ca.pem\"]\n"),
                 {": keys.k.renewal.provider: ", "required", "\"idse\", \"helper\", \"est\""});
  expect_refused(with_renewal("provider = \"acme\"\ntrust_anchors = [\"/ca.pem\"]\n"),
                 {": keys.k.renewal.provider: ", "'acme'", "\"idse\", \"helper\", \"est\""});
  expect_refused(with_renewal("provider = 1\n"), {": keys.k.renewal.provider: ", "string"});
}

TEST_F(ConfigTest, RefusesARenewalWithoutTrustAnchors) {
  expect_refused(with_renewal("provider = \"idse\"\nurl = \"https://x\"\n"), {": keys.k.renewal.trust_anchors: ", "required"});
  expect_refused(with_renewal("provider = \"idse\"\nurl = \"https://x\"\ntrust_anchors = []\n"),
                 {": keys.k.renewal.trust_anchors: ", "required"});
  expect_refused(with_renewal("provider = \"idse\"\nurl = \"https://x\"\ntrust_anchors = [\"ca.pem\"]\n"),
                 {": keys.k.renewal.trust_anchors: ", "'ca.pem'", "absolute"});
  expect_refused(with_renewal("provider = \"idse\"\nurl = \"https://x\"\ntrust_anchors = \"/ca.pem\"\n"),
                 {": keys.k.renewal.trust_anchors: ", "array"});
}

TEST_F(ConfigTest, RefusesANetworkProviderWithoutAUrl) {
  expect_refused(with_renewal("provider = \"idse\"\ntrust_anchors = [\"/ca.pem\"]\n"),
                 {": keys.k.renewal.url: ", "required", "idse"});
  expect_refused(with_renewal("provider = \"est\"\ntrust_anchors = [\"/ca.pem\"]\n"), {": keys.k.renewal.url: ", "required", "est"});
}

TEST_F(ConfigTest, RefusesAUrlThatIsNotHttpWithAHost) {
  for (std::string_view url : {"ftp://ca.example.test", "idse.example.test", "https://", "https:///idse", "https://:443",
                               "https://user:pw@ca.example.test", "https://ca.example.test/?a=1",
                               "https://ca.example.test/#x", "https://ca.example.test:0", "https://ca.example.test:70000",
                               "https://ca.example.test:", "https://ca example", "https://[::1", ""}) {
    expect_refused(with_renewal("provider = \"idse\"\ntrust_anchors = [\"/ca.pem\"]\nurl = \"" + std::string(url) + "\"\n"),
                   {": keys.k.renewal.url: ", "https://"});
  }
  ASSERT_NO_THROW(load_config(
      write(with_renewal("provider = \"est\"\ntrust_anchors = [\"/ca.pem\"]\nurl = \"http://[::1]:8080/.well-known/est\"\n"))));
}

TEST_F(ConfigTest, RefusesAHelperWithoutAnAbsoluteCommand) {
  expect_refused(with_renewal("provider = \"helper\"\ntrust_anchors = [\"/ca.pem\"]\n"),
                 {": keys.k.renewal.command: ", "required"});
  expect_refused(with_renewal("provider = \"helper\"\ntrust_anchors = [\"/ca.pem\"]\ncommand = []\n"),
                 {": keys.k.renewal.command: ", "absolute"});
  expect_refused(with_renewal("provider = \"helper\"\ntrust_anchors = [\"/ca.pem\"]\ncommand = [\"helper\", \"-x\"]\n"),
                 {": keys.k.renewal.command: ", "absolute"});
  expect_refused(with_renewal("provider = \"helper\"\ntrust_anchors = [\"/ca.pem\"]\ncommand = \"/usr/bin/helper\"\n"),
                 {": keys.k.renewal.command: ", "array"});
  expect_refused(with_renewal("provider = \"helper\"\ntrust_anchors = [\"/ca.pem\"]\ncommand = [\"/h\", \"a\\u0000b\"]\n"),
                 {": keys.k.renewal.command: ", "NUL"});
}

TEST_F(ConfigTest, RefusesKeysThatDoNotGoWithTheProvider) {
  expect_refused(with_renewal(std::string(kIdse) + "command = [\"/h\"]\n"), {": keys.k.renewal.command: ", "\"helper\""});
  expect_refused(with_renewal(std::string(kIdse) + "helper_timeout = \"1m\"\n"), {": keys.k.renewal.helper_timeout: "});
  expect_refused(with_renewal(std::string(kHelper) + "url = \"https://x\"\n"), {": keys.k.renewal.url: ", "\"idse\" or \"est\""});
  expect_refused(with_renewal(std::string(kHelper) + "max_redirects = 1\n"), {": keys.k.renewal.max_redirects: "});
  expect_refused(with_renewal(std::string(kEst) + "lookup_path = \"/x?n={npie}\"\n"), {": keys.k.renewal.lookup_path: ", "\"idse\""});
  expect_refused(with_renewal(std::string(kEst) + "acceptance_text = \"ACEPTO\"\n"), {": keys.k.renewal.acceptance_text: "});
}

TEST_F(ConfigTest, RefusesAnUnknownKeyPolicyOrKeyType) {
  expect_refused(with_renewal(std::string(kIdse) + "key = \"old\"\n"), {": keys.k.renewal.key: ", "\"new\", \"reuse\""});
  expect_refused(with_renewal(std::string(kIdse) + "key_type = \"rsa-1024\"\n"),
                 {": keys.k.renewal.key_type: ", "\"rsa-2048\"", "\"ec-p384\""});
}

TEST_F(ConfigTest, RefusesASubjectNotInOpenSslOneLineForm) {
  for (std::string_view subject : {"CN=Nombre", "/", "/CN", "/CN=", "/=x", "/C=MX//CN=x", "/XX=y", "/C=MEX"}) {
    expect_refused(with_renewal(std::string(kIdse) + "subject = \"" + std::string(subject) + "\"\n"),
                   {": keys.k.renewal.subject: ", "/C=MX/O=Empresa/CN=Nombre"});
  }
  ASSERT_NO_THROW(load_config(write(with_renewal(std::string(kIdse) + "subject = \"/2.5.4.3=x/O=A+B\"\n"))));
}

TEST_F(ConfigTest, RefusesBeforeDaysOutOfRangeOrWithALifetimeFraction) {
  for (std::string_view v : {"0", "3651", "-1", "\"30\""})
    expect_refused(with_renewal(std::string(kIdse) + "before_days = " + std::string(v) + "\n"),
                   {": keys.k.renewal.before_days: ", "from 1 to 3650"});
  expect_refused(with_renewal(std::string(kIdse) + "before_days = 30\nlifetime_fraction = 0.5\n"),
                 {": keys.k.renewal.lifetime_fraction: ", "before_days"});
}

TEST_F(ConfigTest, RefusesALifetimeFractionOutsideZeroToOne) {
  for (std::string_view v : {"0.0", "1.0", "1", "0", "-0.5", "nan", "inf", "\"0.5\""})
    expect_refused(with_renewal(std::string(kIdse) + "lifetime_fraction = " + std::string(v) + "\n"),
                   {": keys.k.renewal.lifetime_fraction: ", "less than 1"});
}

TEST_F(ConfigTest, RefusesDurationsWithoutAUnitOrOutOfRange) {
  for (std::string_view v : {"\"12\"", "\"12 h\"", "\"12x\"", "\"\"", "\"-1s\"", "\"1.5h\"", "\"h\"", "43200", "\"31d\"",
                             "\"99999999999999999999d\""})
    expect_refused(with_renewal(std::string(kIdse) + "jitter = " + std::string(v) + "\n"),
                   {": keys.k.renewal.jitter: ", "0s to 30d", "ms, s, m, h, d"});
  expect_refused(with_renewal(std::string(kIdse) + "jitter = \"1500ms\"\n"), {": keys.k.renewal.jitter: ", "whole number of seconds"});
  expect_refused(with_renewal(std::string(kIdse) + "retry_initial = \"0s\"\n"), {": keys.k.renewal.retry_initial: ", "1s to 1d"});
  expect_refused(with_renewal(std::string(kIdse) + "retry_max = \"31d\"\n"), {": keys.k.renewal.retry_max: ", "1s to 30d"});
  expect_refused(with_renewal(std::string(kIdse) + "connect_timeout = \"50ms\"\n"),
                 {": keys.k.renewal.connect_timeout: ", "100ms to 10m"});
  expect_refused(with_renewal(std::string(kIdse) + "timeout = \"2h\"\n"), {": keys.k.renewal.timeout: ", "1s to 1h"});
  expect_refused(with_renewal(std::string(kIdse) + "post_install_timeout = \"0s\"\n"),
                 {": keys.k.renewal.post_install_timeout: ", "100ms to 1h"});
  expect_refused(with_renewal(std::string(kHelper) + "helper_timeout = \"61m\"\n"), {": keys.k.renewal.helper_timeout: ", "1s to 1h"});
}

TEST_F(ConfigTest, RefusesARetryInitialLongerThanRetryMax) {
  expect_refused(with_renewal(std::string(kIdse) + "retry_initial = \"2h\"\nretry_max = \"1h\"\n"),
                 {": keys.k.renewal.retry_initial: ", "retry_max (1h)"});
  expect_refused(with_renewal(std::string(kIdse) + "retry_max = \"30s\"\n"), {": keys.k.renewal.retry_initial: ", "retry_max (30s)"});
}

TEST_F(ConfigTest, RefusesWarnDaysOutOfRange) {
  for (std::string_view v : {"[0]", "[3651]", "[30, -1]", "[1.5]", "[\"7\"]", "30"})
    expect_refused(with_renewal(std::string(kIdse) + "warn_days = " + std::string(v) + "\n"),
                   {": keys.k.renewal.warn_days: ", "from 1 to 3650"});
}

TEST_F(ConfigTest, RefusesRedirectAndResponseLimitsOutOfRange) {
  for (std::string_view v : {"-1", "11"})
    expect_refused(with_renewal(std::string(kIdse) + "max_redirects = " + std::string(v) + "\n"),
                   {": keys.k.renewal.max_redirects: ", "from 0 to 10"});
  for (std::string_view v : {"1023", "67108865", "0"})
    expect_refused(with_renewal(std::string(kIdse) + "max_response_bytes = " + std::string(v) + "\n"),
                   {": keys.k.renewal.max_response_bytes: ", "from 1024 to 67108864"});
  expect_refused(with_renewal(std::string(kHelper) + "helper_max_output = 100\n"),
                 {": keys.k.renewal.helper_max_output: ", "from 1024 to 67108864"});
  for (std::string_view v : {"1024", "67108864"})
    EXPECT_NO_THROW(load_config(write(with_renewal(std::string(kIdse) + "max_response_bytes = " + std::string(v) + "\n"))));
}

TEST_F(ConfigTest, RefusesInstallFilesThatAreNotAbsoluteOrModesAbove0777) {
  expect_refused(with_renewal(std::string(kIdse) + "certificate_file = \"cert.pem\"\n"),
                 {": keys.k.renewal.certificate_file: ", "absolute"});
  expect_refused(with_renewal(std::string(kIdse) + "chain_file = \"\"\n"), {": keys.k.renewal.chain_file: ", "absolute"});
  for (std::string_view mode : {"0778", "01777", "abc", "", "0644 "})
    expect_refused(with_renewal(std::string(kIdse) + "certificate_file = \"/c.pem\"\nfile_mode = \"" + std::string(mode) + "\"\n"),
                   {": keys.k.renewal.file_mode: ", "\"0644\""});
  expect_refused(with_renewal(std::string(kIdse) + "certificate_file = \"/c.pem\"\nfile_mode = 420\n"),
                 {": keys.k.renewal.file_mode: "});
}

TEST_F(ConfigTest, RefusesFileOwnershipWithoutAFileToOwn) {
  for (std::string_view key : {"file_owner = \"root\"", "file_group = \"root\"", "file_mode = \"0600\""})
    expect_refused(with_renewal(std::string(kIdse) + std::string(key) + "\n"), {": keys.k.renewal.file_", "certificate_file"});
}

TEST_F(ConfigTest, RefusesAnUnknownFileOwnerOrGroup) {
  expect_refused(with_renewal(std::string(kIdse) + "chain_file = \"/c.pem\"\nfile_owner = \"no-such-user-f1rmad\"\n"),
                 {": keys.k.renewal.file_owner: ", "no-such-user-f1rmad"});
  expect_refused(with_renewal(std::string(kIdse) + "chain_file = \"/c.pem\"\nfile_group = \"no-such-group-f1rmad\"\n"),
                 {": keys.k.renewal.file_group: ", "no-such-group-f1rmad"});
  expect_refused(with_renewal(std::string(kIdse) + "chain_file = \"/c.pem\"\nfile_owner = -1\n"),
                 {": keys.k.renewal.file_owner: "});
}

TEST_F(ConfigTest, RefusesAPostInstallCommandWithoutAnAbsoluteProgram) {
  expect_refused(with_renewal(std::string(kIdse) + "post_install = [\"systemctl\", \"reload\", \"x\"]\n"),
                 {": keys.k.renewal.post_install: ", "absolute"});
  expect_refused(with_renewal(std::string(kIdse) + "post_install = []\n"), {": keys.k.renewal.post_install: "});
}

TEST_F(ConfigTest, RefusesIdsePathsWithoutTheirPlaceholders) {
  expect_refused(with_renewal(std::string(kIdse) + "lookup_path = \"/idse/consultaSerie.idse?NPIE=\"\n"),
                 {": keys.k.renewal.lookup_path: ", "{npie}"});
  expect_refused(with_renewal(std::string(kIdse) + "fetch_path = \"/idse/instalaRenovacion.idse\"\n"),
                 {": keys.k.renewal.fetch_path: ", "{serial}"});
  expect_refused(with_renewal(std::string(kIdse) + "submit_path = \"idse/solicitud\"\n"),
                 {": keys.k.renewal.submit_path: ", "'/'"});
  expect_refused(with_renewal(std::string(kIdse) + "lookup_path = \"/a b?n={npie}\"\n"), {": keys.k.renewal.lookup_path: "});
}

TEST_F(ConfigTest, RefusesAnEmptyAcceptanceTextOrANonBooleanAutomatic) {
  expect_refused(with_renewal(std::string(kIdse) + "acceptance_text = \"\"\n"), {": keys.k.renewal.acceptance_text: "});
  expect_refused(with_renewal(std::string(kIdse) + "automatic = \"yes\"\n"), {": keys.k.renewal.automatic: ", "true or false"});
}

TEST_F(ConfigTest, EveryPrefixOfARenewalTableLoadsOrFailsWithConfigError) {
  const std::string full = with_renewal(std::string(kIdse) +
                                        "jitter = \"1h\"\nwarn_days = [10, 1]\ncertificate_file = \"/c.pem\"\n"
                                        "file_mode = \"0600\"\npost_install = [\"/bin/true\"]\n");
  ASSERT_NO_THROW(load_config(write(full)));
  for (std::size_t n = 0; n < full.size(); ++n) {
    const std::string path = write(std::string_view(full).substr(0, n));
    try {
      load_config(path);
    } catch (const ConfigError&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "prefix of " << n << " bytes: " << e.what();
    }
  }
}

}  // namespace
}  // namespace firmad
