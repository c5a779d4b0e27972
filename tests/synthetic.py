"""Synthetic scenes with known answers, for the bpy-free core tests."""
import numpy as np

from silk.engine.guides import Camera, FrameGeometry, Instance, Mesh


def perspective(fov_y_degrees=60.0, aspect=1.0, near=0.1, far=100.0):
    t = 1.0 / np.tan(np.radians(fov_y_degrees) / 2)
    p = np.zeros((4, 4))
    p[0, 0], p[1, 1] = t / aspect, t
    p[2, 2], p[2, 3] = (far + near) / (near - far), 2 * far * near / (near - far)
    p[3, 2] = -1.0
    return p


def orthographic(half_width, half_height, near=0.1, far=100.0):
    p = np.eye(4)
    p[0, 0], p[1, 1] = 1 / half_width, 1 / half_height
    p[2, 2], p[2, 3] = -2 / (far - near), -(far + near) / (far - near)
    return p


def camera(width=64, height=48, view=None, ortho=False, fov=60.0, near=0.1, far=100.0):
    projection = (orthographic(4.0, 4.0 * height / width, near, far) if ortho
                  else perspective(fov, width / height, near, far))
    return Camera(view=np.eye(4) if view is None else view, projection=projection, width=width,
                  height=height, clip_start=near, clip_end=far)


def translation(x=0.0, y=0.0, z=0.0):
    m = np.eye(4)
    m[:3, 3] = (x, y, z)
    return m


def quad(size=1.0, z=0.0, normal=(0, 0, 1)):
    """A square in the XY plane facing +Z, centred at the origin."""
    s = size / 2
    positions = np.array([[-s, -s, z], [s, -s, z], [s, s, z], [-s, s, z]], dtype=float)
    triangles = np.array([[0, 1, 2], [0, 2, 3]])
    normals = np.tile(np.asarray(normal, dtype=float), (2, 3, 1))
    return Mesh(positions, triangles, normals)


def uv_sphere(radius=1.0, segments=64, rings=32):
    """A smooth sphere whose corner normals are exact radial directions."""
    theta = np.linspace(0, np.pi, rings + 1)
    phi = np.linspace(0, 2 * np.pi, segments + 1)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    unit = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=-1).reshape(-1, 3)
    idx = np.arange((rings + 1) * (segments + 1)).reshape(rings + 1, segments + 1)
    a, b = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel()
    c, d = idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    triangles = np.concatenate([np.stack([a, d, c], 1), np.stack([a, c, b], 1)])
    return Mesh(unit * radius, triangles, unit[triangles])


def frame(cam, *instances):
    return FrameGeometry(cam, list(instances))


def placed(key, mesh, matrix):
    return Instance(key=key, mesh=mesh, matrix=matrix, name=str(key))
