# Stand-in for Slicer's UseSlicer.cmake (see SlicerConfig.cmake here): nothing to set up for a scripted extension.
