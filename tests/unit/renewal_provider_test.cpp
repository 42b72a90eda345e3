// Unit tests of the CA answer parsers the renewal providers use: IDSE "KEY=value" fields and retry hints.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <string>
#include <string_view>

#include "daemon/renewal/provider.hpp"

namespace firmad::renewal {
namespace {

using Fields = std::map<std::string, std::string>;
using std::chrono::seconds;

TEST(IdseFieldsTest, ReadsTheFieldsOfAnIssuedAnswer) {
  EXPECT_EQ(idse_fields("ESTADO=EMITIDO\nSERIAL_NOM=00001000000504465028\n"),
            (Fields{{"ESTADO", "EMITIDO"}, {"SERIAL_NOM", "00001000000504465028"}}));
}

TEST(IdseFieldsTest, TrimsLinesEndedByCrLfAndPaddedWithSpaces) {
  EXPECT_EQ(idse_fields("  ESTADO=PENDIENTE \r\n\tREINTENTAR=120\r\nSERIAL_NOM=42"),
            (Fields{{"ESTADO", "PENDIENTE"}, {"REINTENTAR", "120"}, {"SERIAL_NOM", "42"}}));
}

TEST(IdseFieldsTest, SplitsAtTheFirstEqualsSign) {
  EXPECT_EQ(idse_fields("MOTIVO=RFC=XAXX010101000 no coincide\nK="),
            (Fields{{"MOTIVO", "RFC=XAXX010101000 no coincide"}, {"K", ""}}));
}

TEST(IdseFieldsTest, SkipsLinesWithoutAKey) {
  EXPECT_EQ(idse_fields("<html>error</html>\n=orphan\n\n \nESTADO=RECHAZADO\n"), (Fields{{"ESTADO", "RECHAZADO"}}));
}

TEST(IdseFieldsTest, ARepeatedKeyKeepsItsLastValue) {
  EXPECT_EQ(idse_fields("ESTADO=PENDIENTE\nESTADO=EMITIDO\n"), (Fields{{"ESTADO", "EMITIDO"}}));
}

TEST(IdseFieldsTest, AnEmptyAnswerHasNoFields) {
  EXPECT_TRUE(idse_fields("").empty());
  EXPECT_TRUE(idse_fields("\n\r\n").empty());
}

TEST(IdseFieldsTest, ATruncatedAnswerKeepsWhatArrived) {
  EXPECT_EQ(idse_fields("ESTADO=EMITIDO\nSERIAL_NOM=0000100"), (Fields{{"ESTADO", "EMITIDO"}, {"SERIAL_NOM", "0000100"}}));
  EXPECT_EQ(idse_fields("ESTADO=EMITIDO\nSERIAL_N"), (Fields{{"ESTADO", "EMITIDO"}}));
}

TEST(IdseFieldsTest, AnOversizeAnswerStopsAt32Keys) {
  std::string body;
  for (int i = 0; i < 10000; ++i) body += "K" + std::to_string(i) + "=v\n";
  EXPECT_EQ(idse_fields(body).size(), 32u);
  // One endless line is one field, however long.
  const Fields one = idse_fields("ERROR=" + std::string(1 << 20, 'x'));
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one.at("ERROR").size(), 1u << 20);
}

TEST(IdseFieldsTest, BinaryBytesAreKeptAsTheyCame) {
  const Fields f = idse_fields(std::string_view("A=\0\xff\nB\0=1\n", 10));
  EXPECT_EQ(f.at("A"), std::string("\0\xff", 2));
  EXPECT_EQ(f.at(std::string("B\0", 2)), "1");
}

TEST(RetryAfterTest, ReadsDecimalSeconds) {
  EXPECT_EQ(retry_after_seconds("120"), seconds(120));
  EXPECT_EQ(retry_after_seconds("0"), seconds(0));
  EXPECT_EQ(retry_after_seconds(" \t120\r\n"), seconds(120));
  EXPECT_EQ(retry_after_seconds("000042"), seconds(42));
}

TEST(RetryAfterTest, CapsTheWaitAtOneDay) {
  EXPECT_EQ(retry_after_seconds("86400"), seconds(86400));
  EXPECT_EQ(retry_after_seconds("86401"), seconds(86400));
  EXPECT_EQ(retry_after_seconds("9223372036854775807"), seconds(86400));
  // Too large for any integer is still "much later", not "no hint".
  EXPECT_EQ(retry_after_seconds("99999999999999999999999999999"), seconds(86400));
}

TEST(RetryAfterTest, AnythingElseIsNoHint) {
  for (std::string_view v : {"", " ", "-5", "+5", "1.5", "12abc", "1 2", "0x10", "Wed, 21 Oct 2015 07:28:00 GMT", "\xff"})
    EXPECT_EQ(retry_after_seconds(v), seconds(0)) << "'" << v << "'";
}

}  // namespace
}  // namespace firmad::renewal
