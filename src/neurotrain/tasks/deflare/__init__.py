"""deflare: event-camera flare removal (events -> voxel grid -> residual 3D U-Net -> events)."""
