# Stand-in for Slicer's SlicerExtensionCPack.cmake (see SlicerConfig.cmake here): no package is made.
