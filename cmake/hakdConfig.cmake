# find_package(hakd): the imported targets hakd::hakd (shared library) and hakd::hakd_static,
# with the dependencies their interfaces name (Debian packages: libopenblas-dev, libpng-dev,
# libjpeg62-turbo-dev, libdnnl-dev, and the compiler's OpenMP).
include(CMakeFindDependencyMacro)
find_dependency(PkgConfig)
if(NOT TARGET PkgConfig::OPENBLAS)
  pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)
endif()
find_dependency(OpenMP)
find_dependency(PNG)
find_dependency(JPEG)
# MPI::MPI_C, which the targets name when the library was built with MPI (data-parallel training)
find_package(MPI COMPONENTS C QUIET)
include(${CMAKE_CURRENT_LIST_DIR}/hakdTargets.cmake)
