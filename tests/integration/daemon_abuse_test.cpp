// Bad input: each gets a named error or a closed connection, and firmad keeps serving.
#include <gtest/gtest.h>

#include "daemon_fixture.hpp"
#include "protocol/base64.hpp"
#include "protocol/limits.hpp"

namespace firmad::test {
namespace {

class BadInput : public DaemonSuite {
 protected:
  static void SetUpTestSuite() {
    start({{"log_level", "log_level = \"info\"\nidle_timeout_ms = 400\nmax_connections_per_peer = 8"}});
  }
  void TearDown() override { expect_daemon_still_signs(); }

  // Sends one frame on a fresh connection; returns the reply frame.
  static firma::Json call_raw(const std::string& json) {
    RawConnection raw(rig_->socket());
    EXPECT_TRUE(raw.send(json + '\0'));
    auto reply = raw.read_frame();
    if (!reply) return firma::Json{{"error", "<no reply>"}};
    return firma::Json::parse(*reply);
  }
  static firma::Json sign_with(const firma::Json& params) {
    return call_raw(firma::Json{{"method", "io.firmad.Signer.Sign"}, {"parameters", params}}.dump());
  }
  static std::string digest32() { return protocol::base64_encode(std::vector<std::uint8_t>(32, 1)); }
};

TEST_F(BadInput, MalformedJsonIsAProtocolViolationAndCloses) {
  RawConnection raw(rig_->socket());
  ASSERT_TRUE(raw.send(std::string("{\"method\": ") + '\0'));
  auto reply = raw.read_frame();
  ASSERT_TRUE(reply);
  EXPECT_EQ(firma::Json::parse(*reply)["error"], "io.firmad.Signer.ProtocolViolation");
  EXPECT_TRUE(raw.closed_by_peer());
}

TEST_F(BadInput, NotAnObjectOrNoMethod) {
  EXPECT_EQ(call_raw("[1,2,3]")["error"], "io.firmad.Signer.ProtocolViolation");
  EXPECT_EQ(call_raw("{\"parameters\":{}}")["error"], "io.firmad.Signer.ProtocolViolation");
  EXPECT_EQ(call_raw("{\"method\":7}")["error"], "io.firmad.Signer.ProtocolViolation");
  EXPECT_EQ(call_raw("")["error"], "io.firmad.Signer.ProtocolViolation");
}

TEST_F(BadInput, UnterminatedMessageThatNeverEndsIsCut) {
  RawConnection raw(rig_->socket());
  const std::string chunk(64 * 1024, 'a');
  bool sent = true;
  for (std::size_t total = 0; sent && total <= protocol::kMaxMessageBytes + chunk.size(); total += chunk.size())
    sent = raw.send(chunk);
  EXPECT_TRUE(raw.closed_by_peer()) << "the daemon stops reading at the limit and closes";
  EXPECT_TRUE(daemon_->wait_for_log("event=protocol-violation"));
}

TEST_F(BadInput, SlowUnterminatedMessageTimesOut) {
  RawConnection raw(rig_->socket());
  ASSERT_TRUE(raw.send("{\"method\":\"io.firmad.Signer.Status\""));
  EXPECT_TRUE(raw.closed_by_peer(std::chrono::seconds(5)));
}

TEST_F(BadInput, OversizeTerminatedMessageIsRefused) {
  RawConnection raw(rig_->socket());
  std::string big = "{\"method\":\"io.firmad.Signer.Sign\",\"parameters\":{\"key\":\"" +
                    std::string(protocol::kMaxMessageBytes, 'k') + "\"}}";
  raw.send(big + '\0');
  auto reply = raw.read_frame();
  ASSERT_TRUE(reply);
  EXPECT_EQ(firma::Json::parse(*reply)["error"], "io.firmad.Signer.ProtocolViolation");
  EXPECT_NE(reply->find("exceeds"), std::string::npos);
  EXPECT_TRUE(raw.closed_by_peer());
}

TEST_F(BadInput, DeepNestingIsRefused) {
  std::string deep = "{\"method\":\"io.firmad.Signer.Status\",\"parameters\":{\"x\":" + std::string(40, '[') +
                     std::string(40, ']') + "}}";
  auto r = call_raw(deep);
  EXPECT_EQ(r["error"], "io.firmad.Signer.ProtocolViolation");
  EXPECT_NE(r["parameters"]["reason"].get<std::string>().find("deeper"), std::string::npos);
}

TEST_F(BadInput, MissingExtraAndIllTypedParameters) {
  auto r = sign_with({{"digest", digest32()}});
  EXPECT_EQ(r["error"], "org.varlink.service.InvalidParameter");
  EXPECT_EQ(r["parameters"]["parameter"], "key");
  r = sign_with({{"key", "firma-ec"}});
  EXPECT_EQ(r["error"], "org.varlink.service.InvalidParameter");
  EXPECT_EQ(r["parameters"]["parameter"], "digest");
  r = sign_with({{"key", "firma-ec"}, {"digest", digest32()}, {"bogus", 1}});
  EXPECT_EQ(r["parameters"]["parameter"], "bogus");
  r = sign_with({{"key", 5}, {"digest", digest32()}});
  EXPECT_EQ(r["parameters"]["parameter"], "key");
  r = sign_with({{"key", "firma-ec"}, {"digest", 12}});
  EXPECT_EQ(r["parameters"]["parameter"], "digest");
  r = sign_with({{"key", "firma-ec"}, {"digest", digest32()}, {"hash", "md5"}});
  EXPECT_EQ(r["parameters"]["parameter"], "hash");
  r = sign_with({{"key", "firma-ec"}, {"digest", digest32()}, {"padding", "pss"}});
  EXPECT_EQ(r["parameters"]["parameter"], "padding");
  r = call_raw(R"({"method":"io.firmad.Signer.Status","parameters":{"verbose":true}})");
  EXPECT_EQ(r["parameters"]["parameter"], "verbose");
  r = call_raw(R"({"method":"io.firmad.Signer.Status","parameters":[]})");
  EXPECT_EQ(r["error"], "io.firmad.Signer.ProtocolViolation");
}

TEST_F(BadInput, UnknownMethodsAndInterfaces) {
  auto r = call_raw(R"({"method":"io.firmad.Signer.Explode"})");
  EXPECT_EQ(r["error"], "org.varlink.service.MethodNotFound");
  EXPECT_EQ(r["parameters"]["method"], "io.firmad.Signer.Explode");
  r = call_raw(R"({"method":"com.example.Thing.Do"})");
  EXPECT_EQ(r["error"], "org.varlink.service.InterfaceNotFound");
}

TEST_F(BadInput, InvalidBase64AndWrongDigestLength) {
  auto r = sign_with({{"key", "firma-ec"}, {"digest", "not*base64"}});
  EXPECT_EQ(r["error"], "io.firmad.Signer.InvalidBase64");
  EXPECT_EQ(r["parameters"]["parameter"], "digest");
  r = sign_with({{"key", "firma-ec"}, {"digest", protocol::base64_encode(std::vector<std::uint8_t>(20, 1))}});
  EXPECT_EQ(r["error"], "io.firmad.Signer.DigestLengthMismatch");
  EXPECT_EQ(r["parameters"]["expected"], 32);
  EXPECT_EQ(r["parameters"]["actual"], 20);
  r = sign_with({{"key", "empresa"}, {"digest", digest32()}, {"hash", "sha512"}});
  EXPECT_EQ(r["error"], "io.firmad.Signer.DigestLengthMismatch");
}

TEST_F(BadInput, UnknownKeyAlias) {
  auto r = sign_with({{"key", "nadie"}, {"digest", digest32()}});
  EXPECT_EQ(r["error"], "io.firmad.Signer.KeyNotFound");
  EXPECT_EQ(r["parameters"]["key"], "nadie");
}

TEST_F(BadInput, CmsContentOverTheLimit) {
  const std::string content = protocol::base64_encode(std::vector<std::uint8_t>(protocol::kMaxCmsContentBytes + 1, 'z'));
  auto r = call_raw(firma::Json{{"method", "io.firmad.Signer.SignCms"},
                                {"parameters", {{"key", "empresa"}, {"content", content}}}}.dump());
  EXPECT_EQ(r["error"], "io.firmad.Signer.ContentTooLarge");
  r = call_raw(firma::Json{{"method", "io.firmad.Signer.SignCms"}, {"parameters", {{"key", "empresa"}}}}.dump());
  EXPECT_EQ(r["error"], "org.varlink.service.InvalidParameter");
}

TEST_F(BadInput, SilentPeerIsDisconnected) {
  RawConnection silent(rig_->socket());
  expect_daemon_still_signs();
  EXPECT_TRUE(silent.closed_by_peer(std::chrono::seconds(5)));
  EXPECT_TRUE(daemon_->wait_for_log("event=connection-timeout"));
}

TEST_F(BadInput, PeerThatDisconnectsMidRequest) {
  {
    RawConnection raw(rig_->socket());
    raw.send("{\"method\":\"io.firmad.Signer.Sign\",\"parameters\":{\"key\":\"emp");
  }
  {
    RawConnection raw(rig_->socket());
    raw.send(firma::Json{{"method", "io.firmad.Signer.Sign"}, {"parameters", {{"key", "empresa"}, {"digest", digest32()}}}}.dump() + '\0');
    // Gone before the reply is written.
  }
}

TEST_F(BadInput, ConnectionsPerPeerAreLimited) {
  std::vector<std::unique_ptr<RawConnection>> conns;
  for (int i = 0; i < 8; ++i) conns.push_back(std::make_unique<RawConnection>(rig_->socket()));
  // All 8 are served (one request each, proving they were accepted).
  for (auto& c : conns) {
    ASSERT_TRUE(c->send(std::string(R"({"method":"org.varlink.service.GetInfo"})") + '\0'));
    ASSERT_TRUE(c->read_frame());
  }
  RawConnection ninth(rig_->socket());
  EXPECT_TRUE(ninth.closed_by_peer()) << "the 9th connection of the same uid is refused";
  EXPECT_TRUE(daemon_->wait_for_log("event=connection-refused"));
  conns.clear();
  ASSERT_TRUE(eventually([&] {
    try {
      client().status();
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }));
}

}  // namespace
}  // namespace firmad::test
