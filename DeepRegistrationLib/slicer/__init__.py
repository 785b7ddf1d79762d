"""The MRML bridge: Slicer nodes <-> library images and transforms, the registration logic and its background
worker. The only package of the library that imports ``slicer`` and ``vtk`` (lazily); importable with the
``slicer-core`` wheel alone (no Slicer application)."""
