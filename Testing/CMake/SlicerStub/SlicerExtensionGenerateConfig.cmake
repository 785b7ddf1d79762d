# Stand-in (see SlicerConfig.cmake here): records the extension's metadata as Slicer's description file would.
file(WRITE "${CMAKE_BINARY_DIR}/extension-metadata.txt"
  "homepage ${EXTENSION_HOMEPAGE}\ncategory ${EXTENSION_CATEGORY}\ncontributors ${EXTENSION_CONTRIBUTORS}\n"
  "depends ${EXTENSION_DEPENDS}\niconurl ${EXTENSION_ICONURL}\nscreenshoturls ${EXTENSION_SCREENSHOTURLS}\n")
