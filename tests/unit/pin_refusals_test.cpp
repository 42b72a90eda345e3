// PinRefusals: a refused PIN remembered in a file, by digest, across instances.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "daemon/token/pin_refusals.hpp"

namespace firmad {
namespace {

namespace fs = std::filesystem;

class PinRefusalsTest : public ::testing::Test {
 protected:
  fs::path dir;
  fs::path file;
  void SetUp() override {
    char tmpl[] = "/tmp/pin-refusals-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir = tmpl;
    file = dir / "pin-refused-demo.json";
  }
  void TearDown() override { fs::remove_all(dir); }
  std::string contents() const {
    std::ifstream in(file);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
};

TEST_F(PinRefusalsTest, RemembersTheRefusedPinForThatSerialAcrossInstances) {
  const protocol::Secret wrong("999999"), right("123456");
  {
    PinRefusals memory(file);
    EXPECT_FALSE(memory.refused("serial-1", wrong));
    EXPECT_EQ(memory.remember("serial-1", "PIN file /etc/firmad/pin", wrong), "");
    EXPECT_TRUE(memory.refused("serial-1", wrong));
  }
  PinRefusals again(file);  // a restart
  EXPECT_TRUE(again.refused("serial-1", wrong));
  EXPECT_FALSE(again.refused("serial-1", right)) << "a changed PIN is tried";
  EXPECT_FALSE(again.refused("serial-2", wrong)) << "another token is another matter";
  EXPECT_EQ(again.refused_source(), "PIN file /etc/firmad/pin");
  ASSERT_TRUE(again.refused_at());
  EXPECT_LE(*again.refused_at(), std::time(nullptr));
  EXPECT_EQ(contents().find("999999"), std::string::npos) << "a salted digest is kept, never the PIN";
  EXPECT_EQ(fs::status(file).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
}

TEST_F(PinRefusalsTest, ForgettingRemovesTheFile) {
  PinRefusals memory(file);
  memory.remember("s", "credential firmad-pin", protocol::Secret("1"));
  ASSERT_TRUE(fs::exists(file));
  EXPECT_EQ(memory.forget(), "");
  EXPECT_FALSE(fs::exists(file));
  EXPECT_FALSE(memory.refused("s", protocol::Secret("1")));
  EXPECT_FALSE(PinRefusals(file).refused("s", protocol::Secret("1")));
}

TEST_F(PinRefusalsTest, AMalformedFileIsNoRefusal) {
  for (const char* text : {"", "{", "[]", R"({"salt":"00","digest":"00","source":"x","at":1})", "\xff\xfe"}) {
    std::ofstream(file) << text;
    PinRefusals memory(file);
    EXPECT_FALSE(memory.refused_at()) << text;
    EXPECT_FALSE(memory.refused("s", protocol::Secret("1"))) << text;
  }
}

TEST_F(PinRefusalsTest, AnUnwritableDirectorySaysSoAndStillRemembersInMemory) {
  PinRefusals memory(dir / "missing" / "pin-refused-demo.json");
  EXPECT_NE(memory.remember("s", "PIN file /p", protocol::Secret("1")), "");
  EXPECT_TRUE(memory.refused("s", protocol::Secret("1")));
}

TEST_F(PinRefusalsTest, WithoutAFileItRemembersInMemoryOnly) {
  PinRefusals memory{fs::path()};
  EXPECT_EQ(memory.remember("s", "PIN file /p", protocol::Secret("1")), "");
  EXPECT_TRUE(memory.refused("s", protocol::Secret("1")));
  EXPECT_EQ(memory.forget(), "");
}

}  // namespace
}  // namespace firmad
