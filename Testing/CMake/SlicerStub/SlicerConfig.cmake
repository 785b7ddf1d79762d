# A stand-in for an installed Slicer's SlicerConfig.cmake, enough to configure and build this extension without
# Slicer (Testing/Python/test_extension_build.py). It mimics what the build tree of a scripted extension depends
# on, as Slicer 5.x and CTK do it:
#   - slicerMacroBuildScriptedModule(NAME SCRIPTS RESOURCES [WITH_GENERIC_TESTS]) refuses files that do not exist
#     and copies SCRIPTS (".py" appended when missing) and RESOURCES, by their paths relative to the calling
#     CMakeLists.txt, into ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}: the folder CTest passes to
#     Slicer with --additional-module-path;
#   - ctkMacroCompilePythonScript(TARGET_NAME SCRIPTS RESOURCES [SOURCE_DIR] DESTINATION_DIR INSTALL_DIR
#     [NO_INSTALL_SUBDIR]) copies likewise into DESTINATION_DIR (relative to SOURCE_DIR, default the calling
#     folder) and installs that folder;
#   - slicer_add_python_unittest(SCRIPT ...) records the test (here: a line in python-unittests.txt).
# Nothing is compiled; the copies are what the tests inspect.

set(Slicer_FOUND TRUE)
set(Slicer_USE_PYTHONQT ON)
set(BUILD_TESTING ON)
set(Slicer_VERSION "5.8.0")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.8/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionGenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionCPack.cmake")

function(_stub_copy_python_files target kind source_dir destination_dir)
  set(copied)
  foreach(file IN LISTS ARGN)
    if(IS_ABSOLUTE "${file}")
      set(src "${file}")
      file(RELATIVE_PATH file "${source_dir}" "${file}")
    else()
      set(src "${source_dir}/${file}")
    endif()
    set(tgt "${destination_dir}/${file}")
    add_custom_command(OUTPUT "${tgt}" DEPENDS "${src}"
      COMMAND ${CMAKE_COMMAND} -E copy "${src}" "${tgt}"
      COMMENT "Copying python ${kind}: ${file}")
    list(APPEND copied "${tgt}")
  endforeach()
  if(copied)
    add_custom_target(Copy${target}Python${kind}Files ALL DEPENDS ${copied})
  endif()
endfunction()

macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
    "SCRIPTS;RESOURCES" ${ARGN})
  if(NOT MY_SOURCE_DIR)
    set(MY_SOURCE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
  endif()
  set(_stub_scripts)
  foreach(_file IN LISTS MY_SCRIPTS)
    get_filename_component(_ext "${_file}" EXT)
    if(NOT "${_ext}" MATCHES "py")
      set(_file "${_file}.py")
    endif()
    list(APPEND _stub_scripts "${_file}")
  endforeach()
  _stub_copy_python_files(${MY_TARGET_NAME} Script "${MY_SOURCE_DIR}" "${MY_DESTINATION_DIR}" ${_stub_scripts})
  _stub_copy_python_files(${MY_TARGET_NAME} Resource "${MY_SOURCE_DIR}" "${MY_DESTINATION_DIR}" ${MY_RESOURCES})
  if(MY_NO_INSTALL_SUBDIR)
    install(DIRECTORY "${MY_DESTINATION_DIR}/" DESTINATION "${MY_INSTALL_DIR}" USE_SOURCE_PERMISSIONS)
  else()
    install(DIRECTORY "${MY_DESTINATION_DIR}" DESTINATION "${MY_INSTALL_DIR}" USE_SOURCE_PERMISSIONS)
  endif()
endmacro()

macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): \"${MY_SLICER_UNPARSED_ARGUMENTS}\"")
  endif()
  foreach(_value IN LISTS MY_SLICER_SCRIPTS MY_SLICER_RESOURCES)
    if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${_value}" AND NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${_value}.py")
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file or directory '${_value}'")
    endif()
  endforeach()
  ctkMacroCompilePythonScript(
    TARGET_NAME ${MY_SLICER_NAME}
    SCRIPTS "${MY_SLICER_SCRIPTS}"
    RESOURCES "${MY_SLICER_RESOURCES}"
    DESTINATION_DIR "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}"
    INSTALL_DIR "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"
    NO_INSTALL_SUBDIR)
  if(MY_SLICER_WITH_GENERIC_TESTS)
    file(APPEND "${CMAKE_BINARY_DIR}/python-unittests.txt"
      "generic ${MY_SLICER_NAME} --additional-module-path ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}\n")
  endif()
endmacro()

function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "SLICER_ARGS" ${ARGN})
  file(APPEND "${CMAKE_BINARY_DIR}/python-unittests.txt" "unittest ${MY_SCRIPT}\n")
endfunction()
