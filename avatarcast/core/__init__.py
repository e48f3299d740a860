"""What every room shares: the types that cross room borders, the library's errors and the one trajectory module
(easing and keyframe interpolation). Imports nothing else of the package."""
