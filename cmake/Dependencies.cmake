# Finds every dependency; a missing one stops configuration naming the Debian package.

function(firmad_missing what package)
  message(FATAL_ERROR "firmad needs ${what}: install it with 'apt-get install ${package}'")
endfunction()

find_package(PkgConfig QUIET)
if(NOT PkgConfig_FOUND)
  firmad_missing("pkg-config" "pkg-config")
endif()

find_package(OpenSSL 3.0 QUIET)
if(NOT OpenSSL_FOUND)
  firmad_missing("OpenSSL 3 headers" "libssl-dev")
endif()

find_package(Boost 1.74 QUIET CONFIG)
if(NOT Boost_FOUND OR NOT EXISTS "${Boost_INCLUDE_DIRS}/boost/asio.hpp")
  firmad_missing("Boost.Asio (1.74 or later)" "libboost-dev")
endif()

find_package(nlohmann_json 3.10 QUIET CONFIG)
if(NOT nlohmann_json_FOUND)
  firmad_missing("nlohmann-json" "nlohmann-json3-dev")
endif()

find_package(tomlplusplus 3 QUIET CONFIG)
if(NOT tomlplusplus_FOUND)
  firmad_missing("toml++" "libtomlplusplus-dev")
endif()

find_package(CLI11 2 QUIET CONFIG)
if(NOT CLI11_FOUND)
  firmad_missing("CLI11" "libcli11-dev")
endif()

pkg_check_modules(P11KIT QUIET IMPORTED_TARGET p11-kit-1)
if(NOT P11KIT_FOUND)
  firmad_missing("p11-kit" "libp11-kit-dev")
endif()

find_package(Threads REQUIRED)

if(FIRMAD_BUILD_TESTS)
  find_package(GTest QUIET)
  if(NOT GTest_FOUND)
    firmad_missing("GoogleTest" "libgtest-dev")
  endif()
endif()
