// Unit tests of the wire format: base64, Varlink framing, typed parameters, secrets.
#include <gtest/gtest.h>

#include <fstream>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/base64.hpp"
#include "protocol/errors.hpp"
#include "protocol/limits.hpp"
#include "protocol/message.hpp"
#include "protocol/params.hpp"
#include "protocol/secret.hpp"

namespace firmad::protocol {
namespace {

using namespace std::string_literals;
using Bytes = std::vector<std::uint8_t>;

Bytes bytes_of(std::string_view s) { return Bytes(s.begin(), s.end()); }

// Runs `f` and returns the VarlinkError it throws; fails the test if it throws
// nothing or something else.
VarlinkError varlink_error_from(const std::function<void()>& f) {
  try {
    f();
  } catch (const VarlinkError& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-Varlink exception: " << e.what();
    return VarlinkError("none");
  }
  ADD_FAILURE() << "did not throw";
  return VarlinkError("none");
}

// Asserts that parsing `frame` as a call is refused as a protocol violation.
void expect_call_refused(std::string_view frame) {
  SCOPED_TRACE("frame: " + std::string(frame.substr(0, 200)));
  const VarlinkError e = varlink_error_from([&] { parse_call(frame); });
  EXPECT_EQ(e.name(), error::kProtocolViolation);
  EXPECT_TRUE(e.parameters().contains("reason")) << e.what();
}

void expect_reply_refused(std::string_view frame) {
  SCOPED_TRACE("frame: " + std::string(frame.substr(0, 200)));
  const VarlinkError e = varlink_error_from([&] { parse_reply(frame); });
  EXPECT_EQ(e.name(), error::kProtocolViolation);
}

std::string reason_of(std::string_view frame) {
  const VarlinkError e = varlink_error_from([&] { parse_call(frame); });
  return e.parameters().value("reason", "");
}

// A call whose parameters hold `levels` nested arrays: the outer object and
// the parameters object add two more levels.
std::string call_nested(int levels) {
  return R"({"method":"io.firmad.Signer.Sign","parameters":{"x":)" + std::string(levels, '[') +
         std::string(levels, ']') + "}}";
}

// Strips the NUL an encoder appends, for feeding the text back to a parser.
std::string_view without_nul(const std::string& encoded) {
  EXPECT_FALSE(encoded.empty());
  EXPECT_EQ(encoded.back(), '\0');
  return std::string_view(encoded).substr(0, encoded.size() - 1);
}

// ---------------------------------------------------------------- base64

TEST(Base64, EncodesTheRfc4648TestVectors) {
  EXPECT_EQ(base64_encode(bytes_of("")), "");
  EXPECT_EQ(base64_encode(bytes_of("f")), "Zg==");
  EXPECT_EQ(base64_encode(bytes_of("fo")), "Zm8=");
  EXPECT_EQ(base64_encode(bytes_of("foo")), "Zm9v");
  EXPECT_EQ(base64_encode(bytes_of("foob")), "Zm9vYg==");
  EXPECT_EQ(base64_encode(bytes_of("fooba")), "Zm9vYmE=");
  EXPECT_EQ(base64_encode(bytes_of("foobar")), "Zm9vYmFy");
}

TEST(Base64, DecodesTheRfc4648TestVectors) {
  EXPECT_EQ(base64_decode("Zg=="), bytes_of("f"));
  EXPECT_EQ(base64_decode("Zm8="), bytes_of("fo"));
  EXPECT_EQ(base64_decode("Zm9v"), bytes_of("foo"));
  EXPECT_EQ(base64_decode("Zm9vYg=="), bytes_of("foob"));
  EXPECT_EQ(base64_decode("Zm9vYmE="), bytes_of("fooba"));
  EXPECT_EQ(base64_decode("Zm9vYmFy"), bytes_of("foobar"));
}

TEST(Base64, EmptyTextDecodesToNoBytes) {
  const auto decoded = base64_decode("");
  ASSERT_TRUE(decoded.has_value());
  EXPECT_TRUE(decoded->empty());
}

TEST(Base64, RandomBytesOfEveryLengthUpTo70RoundTrip) {
  std::mt19937 rng(20240611);
  std::uniform_int_distribution<int> byte(0, 255);
  for (std::size_t n = 0; n <= 70; ++n) {
    Bytes in(n);
    for (auto& b : in) b = static_cast<std::uint8_t>(byte(rng));
    const std::string text = base64_encode(in);
    EXPECT_EQ(text.size(), (n + 2) / 3 * 4) << "length " << n;
    const auto out = base64_decode(text);
    ASSERT_TRUE(out.has_value()) << "length " << n << ": " << text;
    EXPECT_EQ(*out, in) << "length " << n;
  }
}

TEST(Base64, EveryByteValueRoundTrips) {
  Bytes all(256);
  for (int i = 0; i < 256; ++i) all[i] = static_cast<std::uint8_t>(i);
  EXPECT_EQ(base64_decode(base64_encode(all)), all);
}

TEST(Base64, LargeInputRoundTrips) {
  Bytes big(3 * kMaxCmsContentBytes / 2 + 1);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::uint8_t>(i * 131 + 7);
  const std::string text = base64_encode(big);
  EXPECT_EQ(base64_decode(text), big);
  // One byte cut off the end: the length is no longer a multiple of four.
  EXPECT_FALSE(base64_decode(std::string_view(text).substr(0, text.size() - 1)).has_value());
}

TEST(Base64, RejectsCharactersOutsideTheStandardAlphabet) {
  for (std::string_view bad : {"Zm9!", "Zm9-", "Zm9_", "Zm9vYm$y", "Zm\x80v", "Zm9\xff", "Zm.v"}) {
    EXPECT_FALSE(base64_decode(bad).has_value()) << bad;
  }
  EXPECT_FALSE(base64_decode(std::string_view("Zm\0v", 4)).has_value()) << "embedded NUL";
}

TEST(Base64, RejectsWhitespace) {
  for (std::string_view bad : {"Zm9\n", " Zm9", "Zm9v\t\t\t\t", "Zm9vYmFy\r\n", "Zm9v    ", "Zm 9"}) {
    EXPECT_FALSE(base64_decode(bad).has_value()) << "'" << bad << "'";
  }
}

TEST(Base64, RejectsLengthsThatAreNotAMultipleOfFour) {
  for (std::string_view bad : {"Z", "Zm", "Zm9", "Zm9vY", "Zg=", "Zm9vYg=", "Zg==="}) {
    EXPECT_FALSE(base64_decode(bad).has_value()) << bad;
  }
}

TEST(Base64, RejectsMisplacedOrExcessPadding) {
  for (std::string_view bad : {"====", "Z===", "=Zm9", "Z=m9", "Zg=A", "Zg==Zm9v", "Zm8=Zm9v", "Zm9v===="}) {
    EXPECT_FALSE(base64_decode(bad).has_value()) << bad;
  }
}

TEST(Base64, RejectsNonZeroBitsHiddenByPadding) {
  // Canonical forms are "QQ==" ("A"), "Zg==" ("f") and "Zm8=" ("fo").
  ASSERT_TRUE(base64_decode("QQ==").has_value());
  for (std::string_view bad : {"QR==", "QX==", "Zh==", "Zm9=", "Zm8/Zh==", "Zm9vYh=="}) {
    EXPECT_FALSE(base64_decode(bad).has_value()) << bad;
  }
}

// ---------------------------------------------------------------- parse_call

TEST(ParseCall, AcceptsAPlainCall) {
  const Call c = parse_call(R"({"method":"io.firmad.Signer.Sign","parameters":{"key":"k","n":3}})");
  EXPECT_EQ(c.method, "io.firmad.Signer.Sign");
  EXPECT_EQ(c.parameters, Json({{"key", "k"}, {"n", 3}}));
  EXPECT_FALSE(c.more);
  EXPECT_FALSE(c.oneway);
}

TEST(ParseCall, MissingOrNullParametersBecomeAnEmptyObject) {
  for (std::string_view frame : {R"({"method":"a.B"})", R"({"method":"a.B","parameters":null})"}) {
    const Call c = parse_call(frame);
    EXPECT_TRUE(c.parameters.is_object()) << frame;
    EXPECT_TRUE(c.parameters.empty()) << frame;
  }
}

TEST(ParseCall, ReadsTheMoreFlag) {
  const Call c = parse_call(R"({"method":"io.firmad.Signer.ListKeys","more":true})");
  EXPECT_TRUE(c.more);
  EXPECT_FALSE(c.oneway);
}

TEST(ParseCall, ReadsTheOnewayFlag) {
  const Call c = parse_call(R"({"method":"io.firmad.Signer.ListKeys","oneway":true,"more":false})");
  EXPECT_TRUE(c.oneway);
  EXPECT_FALSE(c.more);
}

TEST(ParseCall, RefusesAnEmptyFrame) {
  expect_call_refused("");
  expect_call_refused("   ");
}

TEST(ParseCall, RefusesEveryTruncationOfAValidCall) {
  const std::string full = R"({"method":"io.firmad.Signer.Sign","parameters":{"key":"k","data":["a",{"b":1.5}]},"more":true})";
  ASSERT_NO_THROW(parse_call(full));
  for (std::size_t n = 0; n < full.size(); ++n) expect_call_refused(std::string_view(full).substr(0, n));
}

TEST(ParseCall, RefusesTrailingBytesAfterTheObject) {
  expect_call_refused(R"({"method":"a.B"} x)");
  expect_call_refused(R"({"method":"a.B"}{"method":"a.B"})");
}

// Disabled until protocol/message.cpp refuses NUL bytes: nlohmann's lexer
// takes a NUL for the end of input, so bytes after it are ignored. The server
// splits frames at NUL, so only direct callers of parse_call can hit this.
TEST(ParseCall, RefusesBytesAfterAnEmbeddedNul) {
  expect_call_refused(std::string_view("{\"method\":\"a.B\"}\0", 17));
  expect_call_refused(std::string_view("{\"method\":\"a.B\"}\0{\"x", 21));
}

TEST(ParseCall, RefusesJsonThatIsNotAnObject) {
  for (std::string_view frame : {"[]", R"(["method","a.B"])", R"("a.B")", "42", "null", "true"}) {
    expect_call_refused(frame);
  }
  EXPECT_EQ(reason_of("[]"), "message is not a JSON object");
}

TEST(ParseCall, RefusesACallWithoutMethod) {
  expect_call_refused("{}");
  expect_call_refused(R"({"parameters":{}})");
}

TEST(ParseCall, RefusesAMethodThatIsNotAString) {
  for (std::string_view frame : {R"({"method":42})", R"({"method":null})", R"({"method":["a.B"]})",
                                 R"({"method":{"a":"B"}})", R"({"method":true})"}) {
    expect_call_refused(frame);
  }
}

TEST(ParseCall, RefusesAMethodWithoutInterface) {
  for (std::string_view frame : {R"({"method":"Foo"})", R"({"method":""})", R"({"method":".Foo"})",
                                 R"({"method":"io.firmad.Signer."})", R"({"method":"."})"}) {
    expect_call_refused(frame);
  }
  EXPECT_EQ(reason_of(R"({"method":"Foo"})"), "'method' is not of the form interface.Method");
}

TEST(ParseCall, RefusesParametersThatAreNotAnObject) {
  for (std::string_view frame : {R"({"method":"a.B","parameters":[]})", R"({"method":"a.B","parameters":"x"})",
                                 R"({"method":"a.B","parameters":1})", R"({"method":"a.B","parameters":false})"}) {
    expect_call_refused(frame);
  }
}

TEST(ParseCall, RefusesUnknownTopLevelFields) {
  expect_call_refused(R"({"method":"a.B","extra":1})");
  expect_call_refused(R"({"method":"a.B","Parameters":{}})");
  EXPECT_EQ(reason_of(R"({"method":"a.B","extra":1})"), "unknown field 'extra' in call");
}

TEST(ParseCall, RefusesAProtocolUpgrade) {
  expect_call_refused(R"({"method":"a.B","upgrade":true})");
  EXPECT_NO_THROW(parse_call(R"({"method":"a.B","upgrade":false})"));
}

TEST(ParseCall, RefusesMoreTogetherWithOneway) {
  expect_call_refused(R"({"method":"a.B","more":true,"oneway":true})");
}

TEST(ParseCall, RefusesFlagsThatAreNotBooleans) {
  for (std::string_view frame : {R"({"method":"a.B","more":"true"})", R"({"method":"a.B","more":1})",
                                 R"({"method":"a.B","oneway":0})", R"({"method":"a.B","oneway":[]})",
                                 R"({"method":"a.B","upgrade":"no"})"}) {
    expect_call_refused(frame);
  }
}

TEST(ParseCall, AcceptsNestingDepth32) {
  const Call c = parse_call(call_nested(kMaxJsonDepth - 2));
  Json level = c.parameters["x"];
  int arrays = 0;
  while (level.is_array()) {
    ++arrays;
    level = level.empty() ? Json() : level[0];
  }
  EXPECT_EQ(arrays, kMaxJsonDepth - 2);
}

TEST(ParseCall, RefusesNestingDepth33) {
  const std::string frame = call_nested(kMaxJsonDepth - 1);
  expect_call_refused(frame);
  EXPECT_NE(reason_of(frame).find("deeper"), std::string::npos) << reason_of(frame);
}

TEST(ParseCall, RefusesDeepObjectsInParametersAsWellAsArrays) {
  std::string deep = R"({"method":"a.B","parameters":)";
  for (int i = 0; i < kMaxJsonDepth; ++i) deep += R"({"a":)";
  deep += "1";
  for (int i = 0; i < kMaxJsonDepth; ++i) deep += "}";
  deep += "}";
  expect_call_refused(deep);
}

TEST(ParseCall, DoesNotCountBracketsInsideStrings) {
  const std::string brackets(100, '[');
  const std::string frame = R"({"method":"a.B","parameters":{"s":")" + brackets + R"(\")" + brackets + R"(","t":"]]]{{{"}})";
  const Call c = parse_call(frame);
  EXPECT_EQ(c.parameters["s"], brackets + "\"" + brackets);
}

TEST(ParseCall, CountsBracketsAfterAStringEndingInAnEscapedBackslash) {
  // "\\" closes the string; the arrays after it nest 33 deep.
  const int levels = kMaxJsonDepth - 1;
  const std::string frame = R"({"method":"a.B","parameters":{"s":"\\","x":)" + std::string(levels, '[') +
                            std::string(levels, ']') + "}}";
  expect_call_refused(frame);
}

TEST(JsonDepth, MeasuresOnlyBracketsOutsideStrings) {
  EXPECT_TRUE(json_depth_within("", 0));
  EXPECT_TRUE(json_depth_within("[[]]", 2));
  EXPECT_FALSE(json_depth_within("[[]]", 1));
  EXPECT_TRUE(json_depth_within(R"(["[[[["])", 1));
  EXPECT_FALSE(json_depth_within(R"(["\\",[[]]])", 2));
  EXPECT_TRUE(json_depth_within("[][][][]", 1));
}

TEST(ParseCall, AcceptsAFrameOfExactlyTheMaximumSize) {
  std::string frame = R"({"method":"a.B","parameters":{"pad":")";
  const std::string tail = "\"}}";
  frame += std::string(kMaxMessageBytes - frame.size() - tail.size(), 'x');
  frame += tail;
  ASSERT_EQ(frame.size(), kMaxMessageBytes);
  EXPECT_NO_THROW(parse_call(frame));
}

TEST(ParseCall, RefusesAnOversizeFrame) {
  std::string frame = R"({"method":"a.B","parameters":{"pad":")";
  const std::string tail = "\"}}";
  frame += std::string(kMaxMessageBytes + 1 - frame.size() - tail.size(), 'x');
  frame += tail;
  ASSERT_EQ(frame.size(), kMaxMessageBytes + 1);
  expect_call_refused(frame);
  EXPECT_NE(reason_of(frame).find("exceeds"), std::string::npos) << reason_of(frame);
}

TEST(ParseCall, RefusesInvalidUtf8) {
  expect_call_refused("{\"method\":\"a.B\",\"parameters\":{\"s\":\"\xff\xfe\"}}");
  expect_call_refused(R"({"method":"a.B","parameters":{"s":"\ud800"}})");
}

TEST(EncodeCall, RoundTripsThroughParseCall) {
  Call in;
  in.method = "io.firmad.Signer.Sign";
  in.parameters = {{"key", "k"}, {"digest", "AAAA"}};
  in.more = true;
  const std::string encoded = encode_call(in);
  EXPECT_EQ(std::count(encoded.begin(), encoded.end(), '\0'), 1);
  const Call out = parse_call(without_nul(encoded));
  EXPECT_EQ(out.method, in.method);
  EXPECT_EQ(out.parameters, in.parameters);
  EXPECT_TRUE(out.more);
  EXPECT_FALSE(out.oneway);
}

// ---------------------------------------------------------------- replies

TEST(EncodeReply, EndsWithExactlyOneNulAndRoundTrips) {
  const Json params = {{"signature", "AAEC"}, {"text", "with\0nul"s}, {"n", 7}};
  const std::string encoded = encode_reply(params);
  EXPECT_EQ(std::count(encoded.begin(), encoded.end(), '\0'), 1);
  EXPECT_EQ(encoded.back(), '\0');
  const Reply r = parse_reply(without_nul(encoded));
  EXPECT_FALSE(r.error.has_value());
  EXPECT_EQ(r.parameters, params);
  EXPECT_FALSE(r.continues);
}

TEST(EncodeReply, CarriesTheContinuesFlag) {
  const Reply r = parse_reply(without_nul(encode_reply({{"key", "a"}}, /*continues=*/true)));
  EXPECT_TRUE(r.continues);
  EXPECT_EQ(r.parameters, Json({{"key", "a"}}));
}

TEST(EncodeReply, NullParametersBecomeAnEmptyObject) {
  const Reply r = parse_reply(without_nul(encode_reply(Json())));
  EXPECT_TRUE(r.parameters.is_object());
  EXPECT_TRUE(r.parameters.empty());
}

TEST(EncodeReply, ReplacesInvalidUtf8InsteadOfThrowing) {
  std::string encoded;
  ASSERT_NO_THROW(encoded = encode_reply({{"label", "bad\xff"}}));
  const Reply r = parse_reply(without_nul(encoded));
  EXPECT_EQ(r.parameters["label"], "bad\xef\xbf\xbd");
}

TEST(EncodeError, EndsWithExactlyOneNulAndRoundTrips) {
  const Json params = {{"key", "release"}, {"retries", 2}};
  const std::string encoded = encode_error(error::kKeyNotFound, params);
  EXPECT_EQ(std::count(encoded.begin(), encoded.end(), '\0'), 1);
  EXPECT_EQ(encoded.back(), '\0');
  const Reply r = parse_reply(without_nul(encoded));
  ASSERT_TRUE(r.error.has_value());
  EXPECT_EQ(*r.error, error::kKeyNotFound);
  EXPECT_EQ(r.parameters, params);
  EXPECT_FALSE(r.continues);
}

TEST(EncodeError, ReplacesInvalidUtf8InsteadOfThrowing) {
  std::string encoded;
  ASSERT_NO_THROW(encoded = encode_error(error::kTokenError, {{"detail", "\xc3"}}));
  EXPECT_EQ(std::count(encoded.begin(), encoded.end(), '\0'), 1);
  EXPECT_NO_THROW(parse_reply(without_nul(encoded)));
}

TEST(ParseReply, RefusesEmptyTruncatedAndOversizeFrames) {
  expect_reply_refused("");
  std::string full = encode_error(error::kPinIncorrect, {{"retries", 2}});
  full.pop_back();
  for (std::size_t n = 0; n < full.size(); ++n) expect_reply_refused(std::string_view(full).substr(0, n));
  std::string big = R"({"parameters":{"pad":")" + std::string(kMaxMessageBytes, 'x') + "\"}}";
  expect_reply_refused(big);
}

TEST(ParseReply, RefusesMistypedFields) {
  expect_reply_refused(R"({"error":42})");
  expect_reply_refused(R"({"error":null})");
  expect_reply_refused(R"({"parameters":[]})");
  expect_reply_refused(R"({"parameters":{},"continues":"yes"})");
  expect_reply_refused("[]");
  expect_reply_refused(std::string(kMaxJsonDepth + 1, '[') + std::string(kMaxJsonDepth + 1, ']'));
}

TEST(InterfaceOf, SplitsAtTheLastDot) {
  EXPECT_EQ(interface_of("io.firmad.Signer.Sign"), "io.firmad.Signer");
  EXPECT_EQ(interface_of("a.B"), "a");
  EXPECT_EQ(interface_of("Foo"), "");
  EXPECT_EQ(interface_of(".Foo"), "");
  EXPECT_EQ(interface_of("a."), "");
  EXPECT_EQ(interface_of(""), "");
}

// ---------------------------------------------------------------- Params

// Runs `f` and asserts it throws `name` naming `parameter`.
void expect_param_error(const std::function<void()>& f, const char* name, const std::string& parameter) {
  const VarlinkError e = varlink_error_from(f);
  EXPECT_EQ(e.name(), name);
  EXPECT_EQ(e.parameters().value("parameter", ""), parameter) << e.what();
}

TEST(Params, ReadsPresentValuesOfTheRightType) {
  const Json j = {{"s", "text"}, {"b", true}, {"i", -5}, {"u", 7}, {"d", "AAEC"}};
  Params p(j);
  EXPECT_EQ(p.required_string("s"), "text");
  EXPECT_TRUE(p.optional_bool("b", false));
  EXPECT_EQ(p.optional_int("i"), -5);
  EXPECT_EQ(p.optional_int("u"), 7);
  EXPECT_EQ(p.required_base64("d"), (Bytes{0, 1, 2}));
  EXPECT_NO_THROW(p.finish());
}

TEST(Params, MissingOptionalValuesFallBack) {
  const Json j = {{"nothing", nullptr}};
  Params p(j);
  EXPECT_EQ(p.optional_string("s"), std::nullopt);
  EXPECT_TRUE(p.optional_bool("b", true));
  EXPECT_FALSE(p.optional_bool("c", false));
  EXPECT_EQ(p.optional_int("i"), std::nullopt);
  EXPECT_EQ(p.optional_base64("d"), std::nullopt);
  EXPECT_EQ(p.optional_string("nothing"), std::nullopt);  // null counts as absent
  EXPECT_NO_THROW(p.finish());
}

TEST(Params, MissingRequiredValueIsAnInvalidParameterNamingIt) {
  const Json j = Json::object();
  expect_param_error([&] { Params(j).required_string("key"); }, error::kInvalidParameter, "key");
  expect_param_error([&] { Params(j).required_base64("digest"); }, error::kInvalidParameter, "digest");
  const Json null_key = {{"key", nullptr}};
  expect_param_error([&] { Params(null_key).required_string("key"); }, error::kInvalidParameter, "key");
}

TEST(Params, WrongTypeIsAnInvalidParameterNamingIt) {
  const Json j = {{"s", 1}, {"b", "true"}, {"i", "5"}, {"f", 1.5}, {"d", 12}, {"o", {{"x", 1}}}};
  expect_param_error([&] { Params(j).required_string("s"); }, error::kInvalidParameter, "s");
  expect_param_error([&] { Params(j).optional_string("o"); }, error::kInvalidParameter, "o");
  expect_param_error([&] { Params(j).optional_bool("b", false); }, error::kInvalidParameter, "b");
  expect_param_error([&] { Params(j).optional_int("i"); }, error::kInvalidParameter, "i");
  expect_param_error([&] { Params(j).optional_int("f"); }, error::kInvalidParameter, "f");
  expect_param_error([&] { Params(j).required_base64("d"); }, error::kInvalidParameter, "d");
  expect_param_error([&] { Params(j).optional_base64("d"); }, error::kInvalidParameter, "d");
}

TEST(Params, UndecodableBase64IsInvalidBase64NamingTheParameter) {
  const Json j = {{"digest", "QR=="}, {"data", "not base64"}};
  expect_param_error([&] { Params(j).required_base64("digest"); }, error::kInvalidBase64, "digest");
  expect_param_error([&] { Params(j).optional_base64("data"); }, error::kInvalidBase64, "data");
}

TEST(Params, FinishRefusesParametersNoAccessorAskedFor) {
  const Json j = {{"key", "k"}, {"dgest", "AAAA"}};
  Params p(j);
  EXPECT_EQ(p.required_string("key"), "k");
  EXPECT_EQ(p.optional_base64("digest"), std::nullopt);
  expect_param_error([&] { p.finish(); }, error::kInvalidParameter, "dgest");
}

TEST(Params, FinishAcceptsParametersAskedForEvenIfAbsentOrNull) {
  const Json j = {{"key", "k"}, {"hash", nullptr}};
  Params p(j);
  p.required_string("key");
  p.optional_string("hash");
  p.optional_bool("detached", true);
  EXPECT_NO_THROW(p.finish());
}

TEST(Params, ParsedCallParametersFeedTheAccessors) {
  const Call c = parse_call(R"({"method":"io.firmad.Signer.Sign","parameters":{"key":"k","digest":"AAEC","extra":1}})");
  Params p(c.parameters);
  EXPECT_EQ(p.required_string("key"), "k");
  EXPECT_EQ(p.required_base64("digest"), (Bytes{0, 1, 2}));
  expect_param_error([&] { p.finish(); }, error::kInvalidParameter, "extra");
}

// Disabled until protocol/params.cpp refuses unsigned integers above INT64_MAX:
// today 18446744073709551615 is read as -1.
TEST(Params, IntegerBeyondInt64IsAnInvalidParameter) {
  const Json j = Json::parse(R"({"n":18446744073709551615})");
  expect_param_error([&] { Params(j).optional_int("n"); }, error::kInvalidParameter, "n");
}

TEST(DigestLength, KnowsTheAcceptedHashesOnly) {
  EXPECT_EQ(digest_length("sha256"), 32u);
  EXPECT_EQ(digest_length("sha384"), 48u);
  EXPECT_EQ(digest_length("sha512"), 64u);
  EXPECT_EQ(digest_length("sha1"), std::nullopt);
  EXPECT_EQ(digest_length("SHA256"), std::nullopt);
  EXPECT_EQ(digest_length(""), std::nullopt);
}

TEST(VarlinkError, WhatNamesTheErrorAndItsParameters) {
  const VarlinkError e = invalid_parameter("digest");
  EXPECT_EQ(e.name(), error::kInvalidParameter);
  EXPECT_EQ(std::string(e.what()), std::string(error::kInvalidParameter) + R"( {"parameter":"digest"})");
}

// Disabled until protocol/errors.hpp builds what() with error_handler_t::replace:
// today a parameter holding invalid UTF-8 (an exception text, a path) makes the
// constructor throw nlohmann::json::type_error instead.
TEST(VarlinkError, ConstructsFromParametersWithInvalidUtf8) {
  EXPECT_NO_THROW(VarlinkError(error::kInternalError, {{"reason", "bad \xff byte"}}));
}

// ---------------------------------------------------------------- Secret

TEST(Secret, MoveConstructionTransfersAndEmptiesTheSource) {
  Secret a("123456");
  Secret b(std::move(a));
  EXPECT_EQ(b.view(), "123456");
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): the wipe is the point
  EXPECT_EQ(a.size(), 0u);
  EXPECT_EQ(a.view(), "");
}

TEST(Secret, MoveAssignmentWipesTheReplacedSecret) {
  Secret a("old-pin-0000");
  const char* old_buffer = a.view().data();
  Secret b("new-pin");
  a = std::move(b);
  EXPECT_EQ(a.view(), "new-pin");
  EXPECT_TRUE(b.empty());  // NOLINT(bugprone-use-after-move)
  // The old buffer now belongs to b, which must have zeroed it.
  EXPECT_EQ(b.view().data(), old_buffer);
  for (std::size_t i = 0; i < 12; ++i) EXPECT_EQ(old_buffer[i], 0) << "byte " << i;
}

TEST(Secret, ClearZeroesTheWholeBuffer) {
  Secret s("correct horse");
  const char* p = s.view().data();
  s.clear();
  EXPECT_TRUE(s.empty());
  for (std::size_t i = 0; i < 13; ++i) EXPECT_EQ(p[i], 0) << "byte " << i;
}

TEST(Secret, AssignTruncatesAtCapacity) {
  Secret s;
  s.assign(std::string(Secret::kCapacity + 44, 'x') + "tail");
  EXPECT_EQ(s.size(), Secret::kCapacity);
  EXPECT_EQ(s.view(), std::string(Secret::kCapacity, 'x'));
  Secret t(std::string(Secret::kCapacity, 'y'));
  EXPECT_EQ(t.size(), Secret::kCapacity);
}

TEST(Secret, AssignReplacesThePreviousContents) {
  Secret s("a much longer first value");
  s.assign("short");
  EXPECT_EQ(s.view(), "short");
}

TEST(Secret, PushBackStopsAtCapacityAndPopBackStopsAtEmpty) {
  Secret s;
  for (std::size_t i = 0; i < Secret::kCapacity + 10; ++i) s.push_back('7');
  EXPECT_EQ(s.size(), Secret::kCapacity);
  s.pop_back();
  EXPECT_EQ(s.size(), Secret::kCapacity - 1);
  Secret e;
  e.pop_back();
  EXPECT_TRUE(e.empty());
}

TEST(Secret, WipeZeroesAStringThatHeldASecret) {
  std::string s = "a pin long enough to live on the heap";
  const std::size_t n = s.size();
  const char* p = s.data();
  wipe(s);
  EXPECT_TRUE(s.empty());
  for (std::size_t i = 0; i < n; ++i) EXPECT_EQ(p[i], 0) << "byte " << i;
}

}  // namespace
TEST(Hex, EncodesEachByteAsTwoLowerCaseDigits) {
  EXPECT_EQ(hex_encode(std::vector<std::uint8_t>{}), "");
  EXPECT_EQ(hex_encode(std::vector<std::uint8_t>{0x00, 0x01, 0xab, 0xff}), "0001abff");
}

}  // namespace firmad::protocol

namespace {

long locked_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmLck:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

TEST(SecretMemory, IsLockedWhileHeldAndUnlockedAfter) {
  const long before = locked_kib();
  {
    firmad::protocol::Secret s("123456");
    EXPECT_GT(locked_kib(), before) << "the PIN's page is locked in memory (root, or RLIMIT_MEMLOCK allows it)";
  }
  EXPECT_EQ(locked_kib(), before);
}

}  // namespace
